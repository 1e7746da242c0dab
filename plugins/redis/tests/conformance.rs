//! The store conformance suite of micro-core against the Redis at 127.0.0.1:6379 (or
//! `MICRO_REDIS_ADDRESS`): the plain [`RedisStore`], the [`Cache`] in front of it (small, so
//! the suite's writes evict), and the cache in front of the memory store.

use crate::common;

use std::sync::Arc;

use common::{Tracked, address, store};
use micro_core::Store;
use micro_core::store::{Cache, Eviction};
use micro_memory::MemoryStore;
use micro_redis::RedisStore;

async fn tracked() -> Tracked<RedisStore> {
    common::tracked(store().await, &address())
}

mod redis_store {
    use super::*;

    micro_core::store_conformance!(async { Arc::new(tracked().await) as Arc<dyn Store> });
}

mod cache_over_redis_lru {
    use super::*;

    micro_core::store_conformance!(async {
        Arc::new(Cache::new(tracked().await).with_max_entries(4)) as Arc<dyn Store>
    });
}

mod cache_over_redis_lfu {
    use super::*;

    micro_core::store_conformance!(async {
        Arc::new(
            Cache::new(tracked().await)
                .with_eviction(Eviction::Lfu)
                .with_max_bytes(200),
        ) as Arc<dyn Store>
    });
}

mod cache_over_memory {
    use super::*;

    micro_core::store_conformance!(async {
        Arc::new(Cache::new(MemoryStore::new()).with_max_entries(4)) as Arc<dyn Store>
    });
}
