//! Helpers shared by the RabbitMQ integration tests: names, connections, and a Jepsen-style
//! queue checker.

#![allow(dead_code, unreachable_pub)]

pub mod doomed;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use lapin::{Channel, Connection, ConnectionProperties};
use micro_rabbitmq::{RabbitBroker, RabbitOptions};

/// Where the tests find RabbitMQ: `MICRO_TEST_RABBITMQ`, or the local default.
pub fn address() -> String {
    std::env::var("MICRO_TEST_RABBITMQ")
        .unwrap_or_else(|_| micro_rabbitmq::DEFAULT_ADDRESS.to_string())
}

/// A name no other test (run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// A broker on `options`, panicking with the reason when RabbitMQ is unreachable.
pub async fn broker(options: RabbitOptions) -> RabbitBroker {
    match RabbitBroker::connect(options).await {
        Ok(broker) => broker,
        Err(err) => {
            panic!("connect to RabbitMQ (is it running? `rabbitmq-server -detached`): {err}")
        }
    }
}

/// A plain lapin channel, for looking at queues behind the plugin's back.
pub async fn raw_channel(address: &str) -> (Connection, Channel) {
    let connection = Connection::connect(address, ConnectionProperties::default())
        .await
        .expect("raw connect");
    let channel = connection.create_channel().await.expect("raw channel");
    (connection, channel)
}

/// Deletes `queues` (best effort: a test's leftovers should not fail it).
pub async fn delete_queues(address: &str, queues: &[&str]) {
    let (connection, channel) = raw_channel(address).await;
    for queue in queues {
        let _ = channel
            .queue_delete((*queue).into(), Default::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Counts like Jepsen's queue checker: what was confirmed to the publisher against what
/// consumers saw, by message id.
#[derive(Clone, Default)]
pub struct Checker {
    confirmed: Arc<Mutex<BTreeSet<u64>>>,
    /// Per id, the members that handled it (one entry per delivery).
    consumed: Arc<Mutex<HashMap<u64, Vec<usize>>>>,
}

/// What the checker found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Confirmed ids.
    pub confirmed: usize,
    /// Distinct ids consumed.
    pub consumed: usize,
    /// Confirmed, never consumed: must be 0.
    pub lost: Vec<u64>,
    /// Consumed, never published: must be 0.
    pub unexpected: Vec<u64>,
    /// Ids consumed more than once, with the members that handled them.
    pub duplicates: Vec<(u64, Vec<usize>)>,
}

impl Checker {
    pub fn confirmed(&self, id: u64) {
        self.confirmed.lock().expect("lock").insert(id);
    }

    pub fn consumed(&self, id: u64, member: usize) {
        self.consumed
            .lock()
            .expect("lock")
            .entry(id)
            .or_default()
            .push(member);
    }

    /// How many ids were confirmed.
    pub fn confirmed_count(&self) -> usize {
        self.confirmed.lock().expect("lock").len()
    }

    /// How many of the confirmed ids have been consumed.
    pub fn settled(&self) -> usize {
        let consumed = self.consumed.lock().expect("lock");
        self.confirmed
            .lock()
            .expect("lock")
            .iter()
            .filter(|id| consumed.contains_key(id))
            .count()
    }

    pub fn per_member(&self, member: usize) -> usize {
        self.consumed
            .lock()
            .expect("lock")
            .values()
            .flatten()
            .filter(|&&m| m == member)
            .count()
    }

    /// The members that handled `id`, one entry per delivery.
    pub fn members_of(&self, id: u64) -> Vec<usize> {
        self.consumed
            .lock()
            .expect("lock")
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Ids `member` handled.
    pub fn handled_by(&self, member: usize) -> BTreeSet<u64> {
        let consumed = self.consumed.lock().expect("lock");
        consumed
            .iter()
            .filter(|(_, members)| members.contains(&member))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn report(&self, published: &BTreeSet<u64>) -> Report {
        let confirmed = self.confirmed.lock().expect("lock");
        let consumed = self.consumed.lock().expect("lock");
        let mut duplicates: Vec<_> = consumed
            .iter()
            .filter(|(_, m)| m.len() > 1)
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        duplicates.sort();
        Report {
            confirmed: confirmed.len(),
            consumed: consumed.len(),
            lost: confirmed
                .iter()
                .filter(|id| !consumed.contains_key(id))
                .copied()
                .collect(),
            unexpected: consumed
                .keys()
                .filter(|id| !published.contains(id))
                .copied()
                .collect(),
            duplicates,
        }
    }
}

/// The id a test message carries in its body (`id:<n>`).
pub fn id_of(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_prefix("id:")?
        .parse()
        .ok()
}
