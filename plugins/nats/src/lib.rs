//! # micro-nats
//!
//! NATS for micro, installed under the name `nats`:
//!
//! - [`NatsBroker`]: a [`Broker`](micro_core::Broker) on core NATS. Topics are subjects, queue
//!   groups are NATS queue groups, headers are NATS headers. Core NATS keeps nothing, so a
//!   handler's `Err` is retried in process (backoff between attempts, up to
//!   [`NatsBroker::with_max_attempts`]) and then published as a dead letter on
//!   `micro.dead-letter.<topic>`, kept by a JetStream stream when the server has JetStream.
//! - [`NatsStore`]: a [`Store`](micro_core::Store) on JetStream key-value buckets, one bucket per
//!   database (`micro-store-<database>`), key `<table>.<key>`; a TTL is a deadline stored with
//!   the record, enforced on every read and swept away in the background.
//! - [`NatsConfig`]: a [`Config`](micro_core::Config) tree on the bucket `micro-config`, one key
//!   per leaf (`db.pool.max` holds the JSON `10`), followed by a key-value watch.
//! - [`NatsRegistry`]: a [`Registry`](micro_core::Registry) on the bucket `micro-registry`, one
//!   key per node (`<service>.<node id>`) holding go-micro's service JSON with that node; the
//!   TTL is a deadline stored with the record, enforced by readers and watchers and swept.
//!
//! Keys and bucket names are escaped reversibly where NATS cannot take a name as it is (see
//! [`encode_key`] and [`encode_bucket`]). The crate README has the whole mapping, the delivery
//! semantics and how to start `nats-server -js`.
//!
//! ```no_run
//! use micro_core::Registry;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> micro_core::Result<()> {
//! let registry = micro_nats::NatsRegistry::connect("nats://127.0.0.1:4222").await?;
//! let services = registry.get_service("greeter").await?;
//! # let _ = services; Ok(()) }
//! ```

mod broker;
mod config;
mod conn;
mod events;
mod kv;
mod registry;
mod store;

pub use broker::{
    ATTEMPTS_HEADER, DEFAULT_DEAD_LETTER_PREFIX, DEFAULT_DEAD_LETTER_STREAM, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PUBLISH_TIMEOUT, DEFAULT_RETRY_BACKOFF, NatsBroker, QUEUE_HEADER, REASON_HEADER,
    TOPIC_HEADER,
};
pub use config::{DEFAULT_BUCKET as CONFIG_BUCKET, NatsConfig};
pub use events::NatsEvents;
pub use kv::{EXPIRES_AT_HEADER, decode_bucket, decode_key, encode_bucket, encode_key};
pub use registry::{
    DEFAULT_BUCKET as REGISTRY_BUCKET, DEFAULT_SWEEP_INTERVAL as REGISTRY_SWEEP_INTERVAL,
    NatsRegistry,
};
pub use store::{
    DEFAULT_BUCKET_PREFIX as STORE_BUCKET_PREFIX, DEFAULT_SWEEP_INTERVAL as STORE_SWEEP_INTERVAL,
    METADATA_HEADER, NatsStore,
};

use std::sync::Arc;

use micro_core::catalog::Catalog;

/// The name these plugins are installed under.
pub const NAME: &str = "nats";

/// The server used when no address is given.
pub const DEFAULT_ADDRESS: &str = "nats://127.0.0.1:4222";

/// Installs the NATS Registry, Broker, Store, Config and Events under the name `nats`.
///
/// Each factory connects to its component's address option (`--registry-address`,
/// `--broker-address`, `--store-address`, `--config-address`, `--events-address`),
/// [`DEFAULT_ADDRESS`] when unset; several servers of one cluster may be given comma-separated.
/// Each opens its own connection.
pub fn install(catalog: &mut Catalog) {
    catalog.add_registry(NAME, |opts| async move {
        let address = opts.address.unwrap_or_default();
        Ok(Arc::new(NatsRegistry::connect(&address).await?) as _)
    });
    catalog.add_broker(NAME, |opts| async move {
        let address = opts.address.unwrap_or_default();
        Ok(Arc::new(NatsBroker::connect(&address).await?) as _)
    });
    catalog.add_store(NAME, |opts| async move {
        let address = opts.address.unwrap_or_default();
        Ok(Arc::new(NatsStore::connect(&address).await?) as _)
    });
    catalog.add_config(NAME, |opts| async move {
        let address = opts.address.unwrap_or_default();
        Ok(Arc::new(NatsConfig::connect(&address).await?) as _)
    });
    // Events on JetStream, at `--events-address`.
    catalog.add_events(NAME, |opts| async move {
        let address = opts.address.unwrap_or_default();
        Ok(Arc::new(NatsEvents::connect(&address).await?) as _)
    });
}
