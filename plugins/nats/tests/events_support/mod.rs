//! What the Events tests of micro-nats share: the server address, connections, clean-up, a
//! checker of who consumed what, a NATS server of a test's own, and the doomed group member.

#![allow(dead_code, unreachable_pub)]

pub mod doomed;
pub use crate::common::server;

use micro_core::events::dead_letter_topic;
use micro_nats::NatsEvents;

/// Where the tests find NATS with JetStream: `MICRO_NATS_ADDRESS`, or the local default.
pub fn address() -> String {
    std::env::var("MICRO_NATS_ADDRESS").unwrap_or_else(|_| micro_nats::DEFAULT_ADDRESS.to_string())
}

/// A topic no other test (run) uses.
pub fn topic(prefix: &str) -> String {
    micro_core::conformance::unique(&format!("test.events.{prefix}"))
}

/// Events on the shared server, panicking with the reason when it is unreachable.
pub async fn events() -> NatsEvents {
    connect(&address()).await
}

/// Events on the server at `address`, panicking with the reason when it is unreachable.
pub async fn connect(address: &str) -> NatsEvents {
    match NatsEvents::connect(address).await {
        Ok(events) => events,
        Err(err) => panic!(
            "connect to NATS at {address} (is it running with JetStream? `nats-server -js`): {err}"
        ),
    }
}

/// Deletes the streams of `topics` and of their dead-letter topics.
pub async fn delete_topics(events: &NatsEvents, topics: &[&str]) {
    for topic in topics {
        events.delete_topic(topic).await.expect("delete topic");
        events
            .delete_topic(&dead_letter_topic(topic))
            .await
            .expect("delete dead-letter topic");
    }
}

/// Deletes the streams of `topics` and of their dead-letter topics on the server at `address`,
/// from a thread and runtime of its own: for `Drop`, which cannot await.
pub fn delete_topics_blocking(address: &str, topics: Vec<String>) {
    if topics.is_empty() {
        return;
    }
    let address = address.to_string();
    let deleting = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to clean up on");
        runtime.block_on(async {
            let events = connect(&address).await;
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            delete_topics(&events, &topics).await;
        });
    });
    if deleting.join().is_err() && !std::thread::panicking() {
        panic!("deleting the streams of the test's topics failed");
    }
}

/// A topic no other test uses, whose streams (the topic's and its dead-letter topic's) are
/// deleted when this is dropped, whether the test passed or panicked.
pub struct TestTopic {
    /// The topic.
    pub name: String,
    address: String,
}

impl TestTopic {
    /// A new topic named after `prefix`, on the shared server.
    pub fn new(prefix: &str) -> Self {
        Self::on(&address(), prefix)
    }

    /// A new topic named after `prefix`, on the server at `address`.
    pub fn on(address: &str, prefix: &str) -> Self {
        TestTopic {
            name: topic(prefix),
            address: address.to_string(),
        }
    }
}

impl std::ops::Deref for TestTopic {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for TestTopic {
    fn drop(&mut self) {
        delete_topics_blocking(&self.address, vec![self.name.clone()]);
    }
}

/// Whether JetStream has a stream of that name.
pub async fn stream_exists(events: &NatsEvents, name: &str) -> bool {
    async_nats::jetstream::new(events.client().clone())
        .get_stream(name)
        .await
        .is_ok()
}
