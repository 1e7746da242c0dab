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
//!
//! `https://` endpoints are dialed over TLS ([`EtcdTls`]): etcd's certificate is verified
//! against `--client-tls-ca` (the system's roots when not given) and `--client-tls-cert` /
//! `--client-tls-key` are presented when set, for an etcd started with `--client-cert-auth`.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> micro_core::Result<()> {
//! let tls = micro_etcd::EtcdTls::new()
//!     .with_ca("ca.pem")
//!     .with_identity("client.pem", "client.key");
//! let store = micro_etcd::EtcdStore::connect_tls("https://10.0.0.1:2379", &tls).await?;
//! # let _ = store; Ok(()) }
//! ```

mod config;
mod range;
mod registry;
mod store;
mod tls;

pub use config::{EtcdConfig, PREFIX as CONFIG_PREFIX};
pub use registry::{EtcdRegistry, PREFIX as REGISTRY_PREFIX};
pub use store::{EtcdStore, PREFIX as STORE_PREFIX};
pub use tls::EtcdTls;

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
/// may be given comma-separated. `https://` endpoints use TLS with the process's client TLS
/// options ([`EtcdTls::from_options`]: `--client-tls-ca`, `--client-tls-cert`,
/// `--client-tls-key`).
pub fn install(catalog: &mut Catalog) {
    catalog.add_registry(NAME, |opts| async move {
        let address = opts.address.unwrap_or_else(|| DEFAULT_ADDRESS.into());
        let tls = EtcdTls::from_options(&opts.options);
        // A server must come up and keep trying to register while etcd is away: an
        // unreachable etcd is reported here, and the registry is returned all the same.
        Ok(Arc::new(EtcdRegistry::connect_tolerant_tls(&address, &tls).await?) as _)
    });
    catalog.add_config(NAME, |opts| async move {
        let address = opts.address.unwrap_or_else(|| DEFAULT_ADDRESS.into());
        let tls = EtcdTls::from_options(&opts.options);
        Ok(Arc::new(EtcdConfig::connect_tls(&address, &tls).await?) as _)
    });
    catalog.add_store(NAME, |opts| async move {
        let address = opts.address.unwrap_or_else(|| DEFAULT_ADDRESS.into());
        let tls = EtcdTls::from_options(&opts.options);
        Ok(Arc::new(EtcdStore::connect_tls(&address, &tls).await?) as _)
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

/// The endpoints of `address`: comma-separated, blanks ignored, [`DEFAULT_ADDRESS`] when empty;
/// schemes in lower case (etcd-client tells `https://` from `http://` case-sensitively).
pub(crate) fn endpoints(address: &str) -> Vec<String> {
    let list: Vec<String> = address
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.split_once("://") {
            Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
            None => e.to_string(),
        })
        .collect();
    if list.is_empty() {
        vec![DEFAULT_ADDRESS.to_string()]
    } else {
        list
    }
}

/// Connects to `address` and checks etcd answers, within a bounded time.
pub(crate) async fn connect(component: &'static str, address: &str, tls: &EtcdTls) -> Result<Conn> {
    connect_checked(component, address, tls, true).await
}

/// Connects to `address` (over TLS when its endpoints are `https://`); when `require_answer`
/// is false an etcd that does not answer yet is logged as an error naming the endpoints, and
/// the lazily connecting client returned anyway. A certificate that does not verify, either
/// way, is an error naming the endpoints and the option that fixes it: waiting would not help.
pub(crate) async fn connect_checked(
    component: &'static str,
    address: &str,
    tls: &EtcdTls,
    require_answer: bool,
) -> Result<Conn> {
    let list = endpoints(address);
    let joined = list.join(",");
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    let secure = tls::secure(component, &list)?;
    if secure {
        let config = tls::tonic(tls).map_err(|e| {
            Error::Option(format!("{NAME} {component}: TLS to etcd at {joined}: {e}"))
        })?;
        options = options.with_tls(config);
    }
    let mut client = Client::connect(&list, Some(options))
        .await
        .map_err(|e| Error::backend(component, NAME, format!("connect {joined}"), e))?;
    // The channel connects lazily: ask for the status so an unreachable etcd is reported here.
    let answer =
        tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), client.status()).await;
    let conn = Conn {
        client,
        endpoints: joined.clone(),
    };
    match answer {
        Ok(Ok(_)) => Ok(conn),
        Ok(Err(e)) => {
            let why = match secure.then(|| tls::explain(tls, &e)).flatten() {
                Some(why) => Some(why),
                None if secure => tls::diagnose(tls, &list).await,
                None => None,
            };
            if let Some(why) = why {
                return Err(Error::backend(
                    component,
                    NAME,
                    format!("cannot connect to etcd at {joined} over TLS: {why}"),
                    e,
                ));
            }
            if !require_answer {
                tracing::error!(endpoints = %joined, error = %e, "cannot reach etcd at {joined}; the {component} keeps trying");
                return Ok(conn);
            }
            Err(Error::backend(
                component,
                NAME,
                format!("cannot reach etcd at {joined}"),
                e,
            ))
        }
        Err(_) if !require_answer => {
            tracing::error!(endpoints = %joined, "cannot reach etcd at {joined}; the {component} keeps trying");
            Ok(conn)
        }
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
        assert_eq!(
            endpoints("HTTPS://a:1,Http://b:2"),
            ["https://a:1", "http://b:2"]
        );
    }
}
