//! Helpers shared by the RabbitMQ integration tests: names, connections, and a Jepsen-style
//! queue checker.

#![allow(dead_code, unreachable_pub)]

pub mod doomed;

use lapin::{Channel, Connection, ConnectionProperties};
use micro_rabbitmq::{RabbitBroker, RabbitOptions};

/// Held by the heavy tests (thousands of messages through a queue group with a member killed,
/// or across a reconnection) for as long as they run: one at a time, as when each was in a test
/// binary of its own, so that none eats into another's time budgets. The other tests run beside
/// them.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
