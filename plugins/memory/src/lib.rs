//! # micro-memory
//!
//! In-process [`Registry`](micro_core::Registry), [`Broker`](micro_core::Broker),
//! [`Store`](micro_core::Store), [`Config`](micro_core::Config) and
//! [`Events`](micro_core::Events) for micro: no server, nothing
//! persisted, everything gone when the process exits. The default for tests and single-process
//! setups; the gateway serves its memory registry to other processes over gRPC.
//!
//! ```
//! use micro_core::store::{Namespace, Query, Record};
//! use micro_core::Store;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> micro_core::Result<()> {
//! let store = micro_memory::MemoryStore::new();
//! store.write(Record::new("user/1", "alice"), &Namespace::default()).await?;
//! let found = store.read("user/", &Query::prefix()).await?;
//! assert_eq!(found[0].value, "alice");
//! # Ok(()) }
//! ```

mod broker;
mod config;
mod events;
mod registry;
mod store;

pub use broker::{MAX_ATTEMPTS, MemoryBroker};
pub use config::MemoryConfig;
pub use events::MemoryEvents;
pub use registry::MemoryRegistry;
pub use store::MemoryStore;

use std::sync::Arc;

use micro_core::catalog::Catalog;

/// The name these plugins are installed under.
pub const NAME: &str = "memory";

/// Installs the memory Registry, Broker, Store, Config and Events under the name `memory`.
///
/// Each lookup through the catalog creates a fresh in-process instance.
pub fn install(catalog: &mut Catalog) {
    catalog.add_registry(NAME, |_| async { Ok(Arc::new(MemoryRegistry::new()) as _) });
    catalog.add_broker(NAME, |_| async { Ok(Arc::new(MemoryBroker::new()) as _) });
    catalog.add_store(NAME, |_| async { Ok(Arc::new(MemoryStore::new()) as _) });
    catalog.add_config(NAME, |_| async { Ok(Arc::new(MemoryConfig::new()) as _) });
    catalog.add_events(NAME, |_| async { Ok(Arc::new(MemoryEvents::new()) as _) });
}
