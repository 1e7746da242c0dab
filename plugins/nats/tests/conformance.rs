//! Every conformance suite of micro-core that NATS backs, against the NATS started by
//! `scripts/setup` (`nats://127.0.0.1:4222`, or `MICRO_NATS_ADDRESS`). Each case works in
//! buckets of its own, deleted when it ends.

use crate::common;

use std::cell::RefCell;
use std::sync::Arc;

use micro_core::conformance::unique;
use micro_core::{Broker, Config, Registry, Store};
use micro_nats::NatsBroker;

thread_local! {
    /// The bucket of the registry the running case made, for its observer. Each case runs on a
    /// thread of its own (the test's), and makes its registry before its observer.
    static REGISTRY_BUCKET: RefCell<Option<String>> = const { RefCell::new(None) };
}

async fn registry() -> Arc<dyn Registry> {
    let bucket = common::unique_bucket("registry");
    REGISTRY_BUCKET.with(|b| *b.borrow_mut() = Some(bucket.clone()));
    common::registry(&bucket).await
}

/// A second connection to the running case's registry bucket.
async fn observer() -> Arc<dyn Registry> {
    let bucket = REGISTRY_BUCKET
        .with(|b| b.borrow().clone())
        .expect("the case made its registry first");
    common::registry(&bucket).await
}

async fn broker() -> Arc<dyn Broker> {
    let broker = NatsBroker::connect(&common::address())
        .await
        .expect("nats broker (run scripts/setup)")
        // The suite dead-letters nothing; if it did, no stream would be left behind.
        .with_dead_letter(unique("test.dead-letter"), None);
    Arc::new(broker)
}

micro_core::registry_conformance!(registry(), observer: async { Some(observer().await) });
micro_core::broker_conformance!(broker());
micro_core::store_conformance!(async {
    common::store(&format!("{}-", common::unique_bucket("store"))).await as Arc<dyn Store>
});
micro_core::config_conformance!(async {
    common::config(&common::unique_bucket("config")).await as Arc<dyn Config>
});
