//! The etcd [`Registry`]: one key per node, one lease per node, watch by prefix.
//!
//! A node lives at `/micro/registry/<service>/<node id>` holding the service JSON with that one
//! node (go-micro's layout). Its key is attached to a lease of the registration TTL, kept alive
//! by [`lease`] while the node is refreshed; each watcher is a [`watch`] loop.

mod lease;
mod watch;

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::KeyValue;
use micro_core::registry::{Registry, Service, Watcher, merge_nodes};
use micro_core::{Error, Result};

use crate::{Conn, EtcdTls, NAME, range};
use lease::Leases;

/// Where the registry keys live (go-micro's prefix).
pub const PREFIX: &str = "/micro/registry/";

const COMPONENT: &str = "registry";

/// Service discovery on etcd. Cheap to share behind an `Arc`; dropping it stops its keep-alive
/// tasks (the leases then lapse after their TTL).
pub struct EtcdRegistry {
    conn: Conn,
    leases: Leases,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.conn.endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdRegistry {
    /// Connects to etcd at `address` (endpoints comma-separated), failing with an error naming
    /// them when etcd does not answer. `https://` endpoints are verified against the system's
    /// roots; see [`connect_tls`](Self::connect_tls).
    pub async fn connect(address: &str) -> Result<Self> {
        Self::connect_tls(address, &EtcdTls::default()).await
    }

    /// Like [`connect`](Self::connect), dialing `https://` endpoints with `tls`.
    pub async fn connect_tls(address: &str, tls: &EtcdTls) -> Result<Self> {
        Ok(Self::on(crate::connect(COMPONENT, address, tls).await?))
    }

    /// Like [`connect`](Self::connect), but an etcd that does not answer yet is logged as an
    /// error naming the endpoints instead of failing: registrations fail (naming them) until it
    /// answers, and a server's registration loop keeps trying.
    pub async fn connect_tolerant(address: &str) -> Result<Self> {
        Self::connect_tolerant_tls(address, &EtcdTls::default()).await
    }

    /// [`connect_tolerant`](Self::connect_tolerant) dialing `https://` endpoints with `tls`:
    /// what the catalog uses. A certificate that does not verify is an error all the same.
    pub async fn connect_tolerant_tls(address: &str, tls: &EtcdTls) -> Result<Self> {
        Ok(Self::on(
            crate::connect_checked(COMPONENT, address, tls, false).await?,
        ))
    }

    /// The registry on an already connected client; `endpoints` names it in errors.
    pub fn from_client(client: etcd_client::Client, endpoints: impl Into<String>) -> Self {
        Self::on(Conn {
            client,
            endpoints: endpoints.into(),
        })
    }

    fn on(conn: Conn) -> Self {
        EtcdRegistry {
            conn,
            leases: Leases::default(),
        }
    }

    /// The keys under `prefix` and the revision they were read at, in pages ([`range`]).
    async fn list_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        range::list(&self.conn.client, prefix)
            .await
            .map_err(|e| self.conn.err(COMPONENT, format!("list {prefix}"), e))
    }

    async fn services_under(&self, prefix: &str) -> Result<Vec<Service>> {
        let (kvs, _) = self.list_prefix(prefix).await?;
        let records = kvs.iter().map(decode).collect::<Result<Vec<_>>>()?;
        Ok(merge_nodes(records))
    }

    /// A watcher that takes itself to have seen every change up to `revision` with nothing
    /// registered, as after a long interruption. For tests of the resync path (a compacted
    /// `revision`): not part of the API.
    #[doc(hidden)]
    pub fn watch_from_revision(&self, service: Option<&str>, revision: i64) -> Watcher {
        watch::start(
            self.conn.clone(),
            watch::watch_prefix(service),
            &[],
            revision,
        )
    }
}

/// The key of `node` of `service`.
fn node_key(service: &str, node: &str) -> String {
    format!("{PREFIX}{service}/{node}")
}

/// The service and node id a key names.
fn parse_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (service, node) = rest.split_once('/')?;
    (!service.is_empty() && !node.is_empty() && !node.contains('/')).then_some((service, node))
}

/// The one-node service a stored key holds; an error naming the key when it does not decode.
fn decode(kv: &KeyValue) -> Result<Service> {
    let key = String::from_utf8_lossy(kv.key());
    serde_json::from_slice::<Service>(kv.value()).map_err(|e| Error::Decode {
        what: format!("etcd registry key `{key}`"),
        message: e.to_string(),
    })
}

#[async_trait]
impl Registry for EtcdRegistry {
    fn name(&self) -> &str {
        NAME
    }

    async fn register(&self, service: &Service, ttl: Duration) -> Result<()> {
        service.validate()?;
        for node in &service.nodes {
            let value = serde_json::to_string(&service.with_node(node.clone())).map_err(|e| {
                Error::Decode {
                    what: format!("service `{}`", service.name),
                    message: e.to_string(),
                }
            })?;
            let key = node_key(&service.name, &node.id);
            self.leases.register(&self.conn, key, value, ttl).await?;
        }
        Ok(())
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        for node in &service.nodes {
            let key = node_key(&service.name, &node.id);
            self.leases.remove(&self.conn, &key).await?;
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        if name.is_empty() || name.contains('/') {
            return Ok(Vec::new());
        }
        self.services_under(&format!("{PREFIX}{name}/")).await
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        self.services_under(PREFIX).await
    }

    async fn list_names(&self) -> Result<Vec<String>> {
        let (keys, _) = range::list_keys(&self.conn.client, PREFIX)
            .await
            .map_err(|e| {
                self.conn
                    .err(COMPONENT, format!("list the keys of {PREFIX}"), e)
            })?;
        // Keys come sorted, so one service's nodes are neighbours; the names themselves are
        // not in order yet (`a-b/…` sorts before `a/…`).
        let mut names: Vec<String> = Vec::new();
        for key in &keys {
            let Some((service, _)) = key.key_str().ok().and_then(parse_key) else {
                continue;
            };
            if names.last().is_none_or(|last| last != service) {
                names.push(service.to_string());
            }
        }
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    async fn watch(&self, service: Option<&str>) -> Result<Watcher> {
        let prefix = watch::watch_prefix(service);
        let (kvs, revision) = self.list_prefix(&prefix).await?;
        Ok(watch::start(self.conn.clone(), prefix, &kvs, revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys() {
        assert_eq!(
            parse_key("/micro/registry/greeter/g-1"),
            Some(("greeter", "g-1"))
        );
        assert_eq!(parse_key("/micro/registry/greeter/"), None);
        assert_eq!(parse_key("/other/greeter/g-1"), None);
        assert_eq!(
            parse_key(&node_key("greeter", "g-1")),
            Some(("greeter", "g-1"))
        );
    }
}
