//! Every conformance suite of micro-core, against `ConsulApiDouble` (or against the Consul
//! agent at `CONSUL_HTTP_ADDR` when it is set).

use crate::support;

use std::sync::Arc;

use micro_consul::{ConsulConfig, ConsulRegistry, ConsulStore};
use micro_core::{Config, Registry, Store};

async fn registry() -> Arc<dyn Registry> {
    let address = support::backend().await;
    Arc::new(ConsulRegistry::new(&address).expect("registry"))
}

async fn observer() -> Option<Arc<dyn Registry>> {
    let address = support::current();
    Some(Arc::new(ConsulRegistry::new(&address).expect("observer")))
}

async fn store() -> Arc<dyn Store> {
    let address = support::backend().await;
    Arc::new(ConsulStore::new(&address).expect("store"))
}

async fn config() -> Arc<dyn Config> {
    let address = support::backend().await;
    Arc::new(ConsulConfig::new(&address).expect("config"))
}

micro_core::registry_conformance!(registry(), observer: observer());
micro_core::store_conformance!(store());
micro_core::config_conformance!(config());
