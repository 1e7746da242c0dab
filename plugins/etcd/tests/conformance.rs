//! Every conformance suite of micro-core that etcd backs, against the etcd started by
//! `scripts/setup` (127.0.0.1:2379, or `MICRO_ETCD_ADDRESS`).

use crate::common;

use std::sync::Arc;

use common::address;
use micro_core::{Config, Registry, Store};
use micro_etcd::{EtcdConfig, EtcdRegistry, EtcdStore};

async fn registry() -> Arc<dyn Registry> {
    common::share().await;
    Arc::new(
        EtcdRegistry::connect(&address())
            .await
            .expect("etcd registry (run scripts/setup)"),
    )
}

micro_core::registry_conformance!(registry(), observer: async { Some(registry().await) });
micro_core::store_conformance!(async {
    common::share().await;
    Arc::new(
        EtcdStore::connect(&address())
            .await
            .expect("etcd store (run scripts/setup)"),
    ) as Arc<dyn Store>
});
micro_core::config_conformance!(async {
    common::share().await;
    Arc::new(
        EtcdConfig::connect(&address())
            .await
            .expect("etcd config (run scripts/setup)"),
    ) as Arc<dyn Config>
});
