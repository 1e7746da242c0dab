//! # micro-rabbitmq
//!
//! A [`Broker`] on RabbitMQ (AMQP 0-9-1, through lapin), installed under the
//! name `rabbitmq`. Topics are routing keys on a durable topic exchange (`micro` by default);
//! subscribers without a queue name get an exclusive auto-delete queue and see every message;
//! subscribers naming a queue share a durable queue of that name, each message going to one of
//! them. Messages are persistent, `publish` returns once RabbitMQ confirmed the message, handlers'
//! messages are acknowledged only after they return `Ok`, failed ones are retried up to
//! [`RabbitOptions::max_attempts`] times and then dead-lettered to `micro.dead-letter`. A dropped
//! connection is re-established with backoff and every subscription restored.
//!
//! ```no_run
//! use micro_core::Broker;
//! use micro_core::broker::{handler, Message, SubscribeOptions};
//! use micro_rabbitmq::{RabbitBroker, RabbitOptions};
//! # #[tokio::main] async fn main() -> micro_core::Result<()> {
//! let broker = RabbitBroker::connect(RabbitOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f")).await?;
//! let on_email = handler(|message: Message| async move {
//!     println!("sending {:?}", message.body);
//!     Ok(())
//! });
//! let subscription = broker.subscribe("jobs.email", on_email, SubscribeOptions::queue("mailers")).await?;
//! broker.publish("jobs.email", Message::new("to: alice").with_header("x-trace-id", "abc")).await?;
//! # subscription.unsubscribe().await?; Ok(()) }
//! ```
//!
//! Delivery is at least once: a message can be handled twice (a subscriber dying between handling
//! and acknowledging, a confirm lost with its connection), never silently dropped once `publish`
//! returned `Ok`, except that a publish to a topic no queue is bound for succeeds and is discarded
//! (go-micro's semantics; [`RabbitOptions::require_route`] makes it an error). The crate README
//! has the details, and how to inspect dead letters.

mod broker;
mod connection;
mod headers;
mod options;
mod subscriber;
mod tls;

pub use broker::RabbitBroker;
pub use options::{
    DEFAULT_ADDRESS, DEFAULT_DEAD_LETTER_EXCHANGE, DEFAULT_EXCHANGE, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PREFETCH, DEFAULT_PUBLISH_TIMEOUT, RabbitOptions,
};
pub use tls::RabbitTls;

use std::sync::Arc;

use micro_core::broker::Broker;
use micro_core::catalog::Catalog;

/// The name this plugin is installed under.
pub const NAME: &str = "rabbitmq";

/// Installs the RabbitMQ broker under the name `rabbitmq`. Its address is `--broker-address` (an
/// `amqp://` URL, [`DEFAULT_ADDRESS`] when unset); an `amqps://` one connects over TLS with the
/// process's client TLS options ([`RabbitTls::from_options`]: `--client-tls-ca`,
/// `--client-tls-cert`, `--client-tls-key`); everything else takes its default. Each lookup
/// through the catalog opens a new connection.
pub fn install(catalog: &mut Catalog) {
    catalog.add_broker(NAME, |options| async move {
        let tls = RabbitTls::from_options(&options.options);
        let address = options
            .address
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        let broker = RabbitBroker::connect(RabbitOptions::new(address).with_tls(tls)).await?;
        Ok(Arc::new(broker) as Arc<dyn Broker>)
    });
}
