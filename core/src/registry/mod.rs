//! Service discovery: services register their nodes, clients find them and watch for changes.
//!
//! Events are per node: `Create` when a node appears, `Update` when a registered node's record
//! changes (its metadata, endpoints or version data), `Delete` when it is deregistered or its TTL
//! lapses. The event's [`Service`] carries exactly the node concerned.
//!
//! For plugin authors with one record per node: [`merge_nodes`] turns the records into what
//! `get_service` returns, and [`diff_nodes`] turns two listings into events, in the one order
//! every backend that diffs listings uses (creates, updates, then deletes).

#[cfg(feature = "conformance")]
pub mod conformance;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A registered service: one name and version, its endpoints and the nodes that serve it.
///
/// Serialized with go-micro's JSON field names so go-micro services and ours can share a registry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The service name clients resolve ("greeter").
    pub name: String,
    /// The version ("1.0.0"); several versions of one name can be registered at once.
    #[serde(default)]
    pub version: String,
    /// Free-form metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    /// The RPC methods the service offers.
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<Endpoint>,
    /// The processes serving it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub nodes: Vec<Node>,
}

/// One process serving a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique id, stable for the life of the process ("greeter-6f1c...").
    pub id: String,
    /// `host:port` the node serves gRPC on.
    pub address: String,
    /// Free-form metadata (`protocol`, `transport`, ...).
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
}

/// One RPC method: `Greeter.SayHello`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `<Service short name>.<Method>`.
    pub name: String,
    /// The request message.
    #[serde(default)]
    pub request: Option<MessageType>,
    /// The response message.
    #[serde(default)]
    pub response: Option<MessageType>,
    /// Free-form metadata; `grpc_method` holds the gRPC path (`/greeter.v1.Greeter/SayHello`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
}

/// A message type as go-micro describes it (its `Value`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageType {
    /// Short name ("HelloRequest").
    pub name: String,
    /// Full protobuf name ("greeter.v1.HelloRequest").
    #[serde(rename = "type")]
    pub full_name: String,
}

/// What happened to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A node appeared.
    Create,
    /// A registered node's record changed.
    Update,
    /// A node was deregistered or its TTL lapsed.
    Delete,
}

/// A change seen by a watcher. `service.nodes` holds the one node concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The service, with the node concerned.
    pub service: Service,
}

/// A stream of registry events. Dropping it ends the watch and whatever task feeds it.
pub type Watcher = BoxStream<'static, Result<Event>>;

/// Service discovery.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The plugin's name ("memory", "etcd", ...).
    fn name(&self) -> &str;

    /// Registers (or refreshes) every node of `service`; a node not refreshed within `ttl`
    /// disappears.
    async fn register(&self, service: &Service, ttl: Duration) -> Result<()>;

    /// Removes the nodes of `service`. Removing an unknown node is not an error.
    async fn deregister(&self, service: &Service) -> Result<()>;

    /// Every registered version of the service named `name`, each with its live nodes; empty when
    /// none is registered.
    async fn get_service(&self, name: &str) -> Result<Vec<Service>>;

    /// Every registered service version with its live nodes.
    async fn list_services(&self) -> Result<Vec<Service>>;

    /// The name of every service with a live node, sorted, each once: what an index, a
    /// readiness check or a tool list needs, without reading every node's record (at 100 000
    /// nodes that is the difference between milliseconds and seconds). The default lists every
    /// service; a plugin whose keys or catalog name the services reads just the names.
    async fn list_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list_services()
            .await?
            .into_iter()
            .filter(|s| !s.nodes.is_empty())
            .map(|s| s.name)
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// Events for the service named `service`, or for all services when `None`.
    async fn watch(&self, service: Option<&str>) -> Result<Watcher>;
}

impl Service {
    /// The same service with only `node`: the shape of an event, and of one stored key.
    pub fn with_node(&self, node: Node) -> Service {
        Service {
            nodes: vec![node],
            ..self.without_nodes()
        }
    }

    /// The same service with no nodes.
    pub fn without_nodes(&self) -> Service {
        Service {
            name: self.name.clone(),
            version: self.version.clone(),
            metadata: self.metadata.clone(),
            endpoints: self.endpoints.clone(),
            nodes: Vec::new(),
        }
    }

    /// Checks what every registry needs: a name, and nodes with ids and addresses.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::invalid("service", "the service name is empty"));
        }
        if self.name.contains('/') {
            return Err(Error::invalid(
                "service",
                format!("service name `{}` contains `/`", self.name),
            ));
        }
        for node in &self.nodes {
            if node.id.is_empty() || node.id.contains('/') {
                return Err(Error::invalid(
                    "service",
                    format!(
                        "node id `{}` of `{}` is empty or has `/`",
                        node.id, self.name
                    ),
                ));
            }
            if node.address.is_empty() {
                return Err(Error::invalid(
                    "service",
                    format!("node `{}` of `{}` has no address", node.id, self.name),
                ));
            }
        }
        Ok(())
    }
}

/// Merges per-node records (one per stored key) into one [`Service`] per version, nodes sorted
/// by id: what `get_service` and `list_services` return for key-per-node backends.
pub fn merge_nodes(records: impl IntoIterator<Item = Service>) -> Vec<Service> {
    let mut by_version: BTreeMap<(String, String), Service> = BTreeMap::new();
    for record in records {
        let key = (record.name.clone(), record.version.clone());
        let entry = by_version
            .entry(key)
            .or_insert_with(|| record.without_nodes());
        entry.nodes.extend(record.nodes);
    }
    let mut services: Vec<Service> = by_version.into_values().collect();
    for service in &mut services {
        service.nodes.sort_by(|a, b| a.id.cmp(&b.id));
    }
    services
}

/// The events that turn the per-node snapshot `before` into `after`: what a backend that can
/// only list its nodes (a blocking query, a resync after lost history) tells its watchers.
///
/// Both maps hold one single-node [`Service`] per node, keyed by whatever names a node in the
/// backend (its node id, or its stored key). A node that is unchanged yields nothing; a node
/// that changed yields one `Update` with its new record, however often it changed in between.
///
/// **The order** is the same for every backend: first `Create` for each node that appeared, then
/// `Update` for each node that changed, then `Delete` for each node that went away, each group
/// in key order. Deletes come last so that a watcher applying the events one by one never holds
/// fewer nodes than the snapshot it ends at: when one node replaced another in the gap (a
/// rolling restart), a client keeps a node to call throughout instead of passing through none.
pub fn diff_nodes<K: Ord>(
    before: &BTreeMap<K, Service>,
    after: &BTreeMap<K, Service>,
) -> Vec<Event> {
    let event = |kind, service: &Service| Event {
        kind,
        service: service.clone(),
    };
    let created = after
        .iter()
        .filter(|(key, _)| !before.contains_key(key))
        .map(|(_, service)| event(EventKind::Create, service));
    let updated = after
        .iter()
        .filter(|(key, service)| before.get(key).is_some_and(|old| old != *service))
        .map(|(_, service)| event(EventKind::Update, service));
    let deleted = before
        .iter()
        .filter(|(key, _)| !after.contains_key(key))
        .map(|(_, service)| event(EventKind::Delete, service));
    created.chain(updated).chain(deleted).collect()
}

fn null_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_micro_json() {
        let json = r#"{"name":"greeter","version":"1.0.0","metadata":null,
            "endpoints":[{"name":"Greeter.SayHello",
              "request":{"name":"HelloRequest","type":"greeter.v1.HelloRequest"},
              "response":{"name":"HelloReply","type":"greeter.v1.HelloReply"},
              "metadata":{"grpc_method":"/greeter.v1.Greeter/SayHello"}}],
            "nodes":[{"id":"greeter-1","address":"127.0.0.1:50051","metadata":{"protocol":"grpc"}}]}"#;
        let service: Service = serde_json::from_str(json).unwrap();
        assert_eq!(
            service.endpoints[0].request.as_ref().unwrap().full_name,
            "greeter.v1.HelloRequest"
        );
        assert_eq!(service.nodes[0].address, "127.0.0.1:50051");
        let back = serde_json::to_value(&service).unwrap();
        assert_eq!(
            back["endpoints"][0]["response"]["type"],
            "greeter.v1.HelloReply"
        );
    }

    #[test]
    fn merges_nodes_per_version() {
        let a = Service {
            name: "s".into(),
            version: "1".into(),
            nodes: vec![Node {
                id: "b".into(),
                address: "x:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let b = Service {
            nodes: vec![Node {
                id: "a".into(),
                address: "x:2".into(),
                ..Default::default()
            }],
            ..a.clone()
        };
        let c = Service {
            version: "2".into(),
            ..a.clone()
        };
        let merged = merge_nodes([a, b, c]);
        assert_eq!(merged.len(), 2);
        assert_eq!(
            merged[0]
                .nodes
                .iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn diffs_in_the_documented_order() {
        let record = |id: &str, port: u16| {
            Service {
                name: "s".into(),
                ..Default::default()
            }
            .with_node(Node {
                id: id.into(),
                address: format!("x:{port}"),
                ..Default::default()
            })
        };
        let snapshot = |nodes: &[(&str, u16)]| -> BTreeMap<String, Service> {
            nodes
                .iter()
                .map(|(id, port)| (id.to_string(), record(id, *port)))
                .collect()
        };
        let before = snapshot(&[("a", 1), ("b", 1), ("c", 1), ("e", 1)]);
        let after = snapshot(&[("b", 2), ("c", 1), ("d", 1), ("f", 1), ("e", 2)]);
        let events = diff_nodes(&before, &after);
        let got: Vec<(EventKind, &str, &str)> = events
            .iter()
            .map(|e| {
                let node = &e.service.nodes[0];
                (e.kind, node.id.as_str(), node.address.as_str())
            })
            .collect();
        assert_eq!(
            got,
            [
                (EventKind::Create, "d", "x:1"),
                (EventKind::Create, "f", "x:1"),
                (EventKind::Update, "b", "x:2"),
                (EventKind::Update, "e", "x:2"),
                (EventKind::Delete, "a", "x:1"),
            ]
        );
        assert!(diff_nodes(&after, &after).is_empty(), "no change, no event");
    }

    #[test]
    fn rejects_bad_services() {
        assert!(Service::default().validate().is_err());
        let s = Service {
            name: "a/b".into(),
            ..Default::default()
        };
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("contains `/`")
        );
    }
}
