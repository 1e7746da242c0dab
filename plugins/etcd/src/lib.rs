//! # micro-etcd
//!
//! [`Registry`](micro_core::Registry), [`Config`](micro_core::Config) and
//! [`Store`](micro_core::Store) for micro on etcd v3 (etcd 3.4 or later).
//!
//! - [`EtcdRegistry`]: one key per node, `/micro/registry/<service>/<node id>`, holding the
//!   service JSON with that one node (go-micro's layout and shape), attached to a lease of the
//!   registration TTL that is kept alive while the node is refreshed, and granted again by itself
//!   when etcd loses it.
//! - [`EtcdConfig`]: one key per leaf under `/micro/config/` (`db.pool.max` is
//!   `/micro/config/db/pool/max` holding the JSON `10`), watched into a local tree.
//! - [`EtcdStore`]: `/micro/store/<database>/<table>/<key>` holding a JSON envelope, TTLs
//!   through leases.
//!
//! ```no_run
//! use micro_core::Registry;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> micro_core::Result<()> {
//! let registry = micro_etcd::EtcdRegistry::connect("127.0.0.1:2379").await?;
//! let services = registry.get_service("greeter").await?;
//! # let _ = services; Ok(()) }
//! ```
//!
//! Through the catalog, [`install`] makes them available as `--registry etcd`, `--config etcd`
//! and `--store etcd`; the address option takes several endpoints comma-separated.

mod config;
mod registry;
mod store;

pub use config::{EtcdConfig, PREFIX as CONFIG_PREFIX};
pub use registry::{EtcdRegistry, PREFIX as REGISTRY_PREFIX};
pub use store::{EtcdStore, PREFIX as STORE_PREFIX};

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use micro_core::catalog::Catalog;
use micro_core::{Error, Result};

/// The name these plugins are installed under.
pub const NAME: &str = "etcd";

/// The endpoint used when no address is given.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:2379";

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the etcd Registry, Config and Store under the name `etcd`.
///
/// Each factory connects to the component's address option (`--registry-address`,
/// `--config-address`, `--store-address`), [`DEFAULT_ADDRESS`] when unset; several endpoints
/// may be given comma-separated.
pub fn install(catalog: &mut Catalog) {
    catalog.add_registry(NAME, |opts| async move {
        let address = opts.address.unwrap_or_else(|| DEFAULT_ADDRESS.into());
        // A server must come up and keep trying to register while etcd is away: an
        // unreachable etcd is reported here, and the registry is returned all the same.
        Ok(Arc::new(EtcdRegistry::connect_tolerant(&address).await?) as _)
    });
    catalog.add_config(NAME, |opts| async move {
        let address = opts.address.unwrap_or_else(|| DEFAULT_ADDRESS.into());
        Ok(Arc::new(EtcdConfig::connect(&address).await?) as _)
    });
    catalog.add_store(NAME, |opts| async move {
        let address = opts.address.unwrap_or_else(|| DEFAULT_ADDRESS.into());
        Ok(Arc::new(EtcdStore::connect(&address).await?) as _)
    });
}

/// A connected client and the endpoints it was given (for error messages).
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) endpoints: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// The endpoints of `address`: comma-separated, blanks ignored, [`DEFAULT_ADDRESS`] when empty.
pub(crate) fn endpoints(address: &str) -> Vec<String> {
    let list: Vec<String> = address
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect();
    if list.is_empty() {
        vec![DEFAULT_ADDRESS.to_string()]
    } else {
        list
    }
}

/// Connects to `address` and checks etcd answers, within a bounded time.
pub(crate) async fn connect(component: &'static str, address: &str) -> Result<Conn> {
    connect_checked(component, address, true).await
}

/// Connects to `address`; when `require_answer` is false an etcd that does not answer yet is
/// logged as an error naming the endpoints, and the lazily connecting client returned anyway.
pub(crate) async fn connect_checked(
    component: &'static str,
    address: &str,
    require_answer: bool,
) -> Result<Conn> {
    let list = endpoints(address);
    let joined = list.join(",");
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    let mut client = Client::connect(&list, Some(options))
        .await
        .map_err(|e| Error::backend(component, NAME, format!("connect {joined}"), e))?;
    // The channel connects lazily: ask for the status so an unreachable etcd is reported here.
    let answer =
        tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), client.status()).await;
    if !require_answer && !matches!(answer, Ok(Ok(_))) {
        tracing::error!(endpoints = %joined, "cannot reach etcd at {joined}; the {component} keeps trying");
        return Ok(Conn {
            client,
            endpoints: joined,
        });
    }
    match answer {
        Ok(Ok(_)) => Ok(Conn {
            client,
            endpoints: joined,
        }),
        Ok(Err(e)) => Err(Error::backend(
            component,
            NAME,
            format!("cannot reach etcd at {joined}"),
            e,
        )),
        Err(_) => Err(Error::backend_msg(
            component,
            NAME,
            format!("cannot reach etcd at {joined}: no answer within {REQUEST_TIMEOUT:?}"),
        )),
    }
}

impl Conn {
    /// A backend error of `component` saying what failed, with the endpoints.
    pub(crate) fn err(
        &self,
        component: &'static str,
        what: impl std::fmt::Display,
        source: etcd_client::Error,
    ) -> Error {
        Error::backend(
            component,
            NAME,
            format!("{what} (etcd at {})", self.endpoints),
            source,
        )
    }
}

/// Whether a new watch's first answer shows a revision older than one already seen: etcd lost
/// its data, and watching from the old revision would miss everything until it catches up.
pub(crate) fn went_back(response: &etcd_client::WatchResponse, seen: i64) -> bool {
    response.created() && response.header().is_some_and(|h| h.revision() < seen)
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_endpoints() {
        assert_eq!(endpoints(""), [DEFAULT_ADDRESS]);
        assert_eq!(endpoints(" a:1, ,b:2 "), ["a:1", "b:2"]);
    }
}
