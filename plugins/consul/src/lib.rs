//! # micro-consul
//!
//! [`Registry`](micro_core::Registry), [`Store`](micro_core::Store) and
//! [`Config`](micro_core::Config) for micro on the Consul HTTP API, installed under the name
//! `consul`:
//!
//! - [`ConsulRegistry`]: one Consul service instance per node with a TTL check, read through
//!   `/v1/health/service/<name>?passing`, watched with blocking queries (one service, or all of
//!   them through `/v1/catalog/services`);
//! - [`ConsulStore`]: records under `micro/store/<database>/<table>/`, expiry enforced on read;
//! - [`ConsulConfig`]: one KV key per leaf under `micro/config/`, watched with a recursive
//!   blocking query.
//!
//! The address comes from `--registry-address` (or the store/config one), default
//! `127.0.0.1:8500`; the ACL token from `CONSUL_HTTP_TOKEN`, sent as `X-Consul-Token`.
//!
//! ```no_run
//! use micro_core::Registry;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> micro_core::Result<()> {
//! let registry = micro_consul::ConsulRegistry::new("127.0.0.1:8500")?;
//! for service in registry.list_services().await? {
//!     println!("{} {}: {} nodes", service.name, service.version, service.nodes.len());
//! }
//! # Ok(()) }
//! ```

mod config;
mod http;
mod kv;
mod registry;
mod store;

pub use config::ConsulConfig;
pub use http::{DEFAULT_ADDRESS, TOKEN_ENV};
pub use registry::{ConsulRegistry, MICRO_TAG, RECORD_TAG_PREFIX, VERSION_META};
pub use store::ConsulStore;

use std::sync::Arc;

use micro_core::catalog::Catalog;

/// The name these plugins are installed under.
pub const NAME: &str = "consul";

/// Installs the Consul Registry, Store and Config under the name `consul`.
///
/// Each factory uses the component's address option (`--registry-address`, `--store-address`,
/// `--config-address`), [`DEFAULT_ADDRESS`] when unset.
pub fn install(catalog: &mut Catalog) {
    catalog.add_registry(NAME, |opts| async move {
        let address = opts.address.unwrap_or_default();
        Ok(Arc::new(ConsulRegistry::new(&address)?) as _)
    });
    catalog.add_store(NAME, |opts| async move {
        let address = opts.address.unwrap_or_default();
        Ok(Arc::new(ConsulStore::new(&address)?) as _)
    });
    catalog.add_config(NAME, |opts| async move {
        let address = opts.address.unwrap_or_default();
        Ok(Arc::new(ConsulConfig::new(&address)?) as _)
    });
}
