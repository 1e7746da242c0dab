//! Every conformance suite of micro-core, on the memory plugins.

use std::sync::Arc;

use micro_core::{Broker, Config, Events, Registry, Store};
use micro_memory::{MemoryBroker, MemoryConfig, MemoryEvents, MemoryRegistry, MemoryStore};

micro_core::registry_conformance!(async { Arc::new(MemoryRegistry::new()) as Arc<dyn Registry> });
micro_core::broker_conformance!(async { Arc::new(MemoryBroker::new()) as Arc<dyn Broker> });
micro_core::store_conformance!(async { Arc::new(MemoryStore::new()) as Arc<dyn Store> });
micro_core::config_conformance!(async { Arc::new(MemoryConfig::new()) as Arc<dyn Config> });
micro_core::events_conformance!(async { Arc::new(MemoryEvents::new()) as Arc<dyn Events> });
