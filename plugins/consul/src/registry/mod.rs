//! [`Registry`] on the Consul agent API: one Consul service instance per micro node, a TTL check
//! per instance, reads through `/v1/health/service/<name>?passing`, watches through blocking
//! queries.
//!
//! ## Mapping
//!
//! | micro                      | Consul service registration                              |
//! |----------------------------|----------------------------------------------------------|
//! | `node.id`                  | `ID` (and the check `service:<ID>`)                      |
//! | `service.name`             | `Name`                                                   |
//! | `node.address` `host:port` | `Address`, `Port`                                        |
//! | `service.version`          | `Meta.micro_version` (for people and filters)            |
//! | the whole per-node record  | tag `micro-service=<JSON>` in go-micro's field names     |
//! | "this is a micro service"  | tag `micro`                                              |
//!
//! The record tag lets `get_service` rebuild exactly what was registered (metadata, endpoints,
//! node metadata: Consul `Meta` keys cannot hold arbitrary names, and values stop at 512
//! characters). Instances without the tag (registered by something else) are still returned,
//! rebuilt from `ID`, `Address`/`Port` (or the node's address when `Service.Address` is empty)
//! and `Meta.micro_version`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode};
use micro_core::registry::{Node, Registry, Service, Watcher, merge_nodes};
use micro_core::{Error, Result};
use serde_json::json;
use tokio::sync::mpsc;

use crate::NAME;
use crate::http::{ConsulHttp, encode_path, go_duration};

mod read;
mod watch;

use read::{instances, micro_names};
use watch::{WatchStream, watch_all, watch_service};

/// The tag every micro instance carries.
pub const MICRO_TAG: &str = "micro";
/// The prefix of the tag holding the per-node record as JSON.
pub const RECORD_TAG_PREFIX: &str = "micro-service=";
/// The `Meta` key holding the version.
pub const VERSION_META: &str = "micro_version";

/// `DeregisterCriticalServiceAfter` has a one minute minimum (agent/service API docs).
const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// The `wait` of blocking queries unless set with [`ConsulRegistry::with_wait`].
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// A [`Registry`] backed by a Consul agent's HTTP API.
pub struct ConsulRegistry {
    http: ConsulHttp,
    wait: Duration,
    /// What this client last registered per node id: an unchanged registration is refreshed
    /// with `/v1/agent/check/pass` instead of registering again.
    registered: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("http", &self.http)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl ConsulRegistry {
    /// A registry talking to the agent at `address` (`host:port`; blank is
    /// [`DEFAULT_ADDRESS`](crate::DEFAULT_ADDRESS)) with the token from `CONSUL_HTTP_TOKEN`, if
    /// set. Connects on first use: only a malformed address is an error here.
    pub fn new(address: &str) -> Result<Self> {
        Ok(ConsulRegistry {
            http: ConsulHttp::new("registry", address)?,
            wait: DEFAULT_WAIT,
            registered: Mutex::new(HashMap::new()),
        })
    }

    /// Sends the ACL token `token` instead of the one from `CONSUL_HTTP_TOKEN`; `None` sends
    /// none.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.http.set_token(token);
        self
    }

    /// Sets the `wait` of the blocking queries behind watches (at most 10 minutes).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait.clamp(Duration::from_secs(1), Duration::from_secs(600));
        self
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.registered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn register_node(&self, service: &Service, node: &Node, ttl: Duration) -> Result<()> {
        let body = registration(service, node, ttl)?;
        let unchanged = self.remembered().get(&node.id) == Some(&body);
        if unchanged {
            // agent/check: PUT /v1/agent/check/pass/:check_id. Unknown check: 404 (older
            // agents: 500 "does not have associated TTL"); either way, register again.
            let path = format!("/v1/agent/check/pass/{}", encode_path(&check_id(&node.id)));
            let reply = self.http.call(Method::PUT, &path, None, None).await?;
            if reply.status.is_success() {
                return Ok(());
            }
            let status = reply.status;
            if status != StatusCode::NOT_FOUND && status != StatusCode::INTERNAL_SERVER_ERROR {
                self.http.ensure_ok(&Method::PUT, &path, reply)?;
                return Ok(());
            }
            tracing::debug!(node = %node.id, %status, "consul check unknown, registering again");
        }
        let path = "/v1/agent/service/register";
        self.http
            .call_ok(Method::PUT, path, Some(Bytes::from(body.clone())))
            .await?;
        self.remembered().insert(node.id.clone(), body);
        // The agent keeps the status of a check it already has, whatever `Status` says (its
        // `addServiceInternal` restores checks from a snapshot of its state): a node whose TTL
        // lapsed would stay critical, out of every read, until its next heartbeat. Pass the
        // check now, so a (re-)registered node is live when `register` returns.
        let pass = format!("/v1/agent/check/pass/{}", encode_path(&check_id(&node.id)));
        self.http.call_ok(Method::PUT, &pass, None).await?;
        Ok(())
    }

    /// The live instances of `name` as per-node records, and the `X-Consul-Index`.
    async fn instances(&self, name: &str, index: u64) -> Result<(BTreeMap<String, Service>, u64)> {
        instances(&self.http, name, index, self.wait).await
    }

    /// Service names carrying the micro tag, and the `X-Consul-Index`.
    async fn micro_names(&self, index: u64) -> Result<(Vec<String>, u64)> {
        micro_names(&self.http, index, self.wait).await
    }
}

fn check_id(node_id: &str) -> String {
    format!("service:{node_id}")
}

/// The body of `PUT /v1/agent/service/register` for one node (agent/service API docs,
/// "Register Service"). The check is a TTL check with `Status` `passing`, which only applies
/// when the agent does not have the check yet; [`ConsulRegistry::register_node`] passes it
/// after every registration.
fn registration(service: &Service, node: &Node, ttl: Duration) -> Result<String> {
    let ttl = ttl.max(Duration::from_secs(1));
    let record = serde_json::to_string(&service.with_node(node.clone()))
        .map_err(|e| Error::invalid("service", format!("cannot encode `{}`: {e}", service.name)))?;
    let (host, port) = split_address(&node.address);
    let mut meta = serde_json::Map::new();
    if service.version.chars().count() <= 512 {
        meta.insert(VERSION_META.into(), json!(service.version));
    }
    let body = json!({
        "ID": node.id,
        "Name": service.name,
        "Tags": [MICRO_TAG, format!("{RECORD_TAG_PREFIX}{record}")],
        "Address": host,
        "Port": port,
        "Meta": meta,
        "Check": {
            "CheckID": check_id(&node.id),
            "Name": format!("micro TTL of {}", node.id),
            "TTL": go_duration(ttl),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": go_duration((ttl * 3).max(MIN_DEREGISTER_AFTER)),
        },
    });
    Ok(body.to_string())
}

/// `host:port` into Consul's `Address` and `Port`; an address without a usable port is kept
/// whole with port 0.
fn split_address(address: &str) -> (String, u16) {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
            Ok(port) => (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
            ),
            Err(_) => (address.to_string(), 0),
        },
        _ => (address.to_string(), 0),
    }
}

fn join_address(host: &str, port: u16) -> String {
    if port == 0 {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[async_trait]
impl Registry for ConsulRegistry {
    fn name(&self) -> &str {
        NAME
    }

    async fn register(&self, service: &Service, ttl: Duration) -> Result<()> {
        service.validate()?;
        for node in &service.nodes {
            self.register_node(service, node, ttl).await?;
        }
        Ok(())
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        for node in &service.nodes {
            self.remembered().remove(&node.id);
            // agent/service: PUT /v1/agent/service/deregister/:service_id; unknown id is 404,
            // which means the node is already gone.
            let path = format!("/v1/agent/service/deregister/{}", encode_path(&node.id));
            let reply = self.http.call(Method::PUT, &path, None, None).await?;
            if reply.status != StatusCode::NOT_FOUND {
                self.http.ensure_ok(&Method::PUT, &path, reply)?;
            }
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        let (records, _) = self.instances(name, 0).await?;
        Ok(merge_nodes(records.into_values()))
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        let (names, _) = self.micro_names(0).await?;
        let lookups = names.iter().map(|name| self.instances(name, 0));
        let mut services = Vec::new();
        for result in futures::future::join_all(lookups).await {
            services.extend(merge_nodes(result?.0.into_values()));
        }
        Ok(services)
    }

    async fn watch(&self, service: Option<&str>) -> Result<Watcher> {
        let (sender, receiver) = mpsc::channel(256);
        let (http, wait) = (self.http.clone(), self.wait);
        let task = match service {
            Some(name) => {
                let (known, index) = self.instances(name, 0).await?;
                let name = name.to_string();
                tokio::spawn(watch_service(http, wait, name, known, index, sender))
            }
            None => {
                let (names, index) = self.micro_names(0).await?;
                let mut initial = Vec::new();
                for name in names {
                    let (known, service_index) = self.instances(&name, 0).await?;
                    initial.push((name, known, service_index));
                }
                tokio::spawn(watch_all(http, wait, initial, index, sender))
            }
        };
        Ok(Box::pin(WatchStream { receiver, task }))
    }
}

#[cfg(test)]
mod tests {
    use super::read::{HealthEntry, record_of};
    use super::*;

    fn service() -> Service {
        Service {
            name: "greeter".into(),
            version: "1.0.0".into(),
            metadata: [("team".to_string(), "a".to_string())].into(),
            nodes: vec![Node {
                id: "greeter-1".into(),
                address: "10.0.0.1:50051".into(),
                metadata: [("protocol".to_string(), "grpc".to_string())].into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn registration_round_trips_through_a_health_entry() {
        let svc = service();
        let body = registration(&svc, &svc.nodes[0], Duration::from_secs(2)).unwrap();
        let reg: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reg["Address"], "10.0.0.1");
        assert_eq!(reg["Port"], 50051);
        assert_eq!(reg["Check"]["TTL"], "2s");
        assert_eq!(reg["Check"]["DeregisterCriticalServiceAfter"], "60s");
        let entry = json!({
            "Node": {"Address": "10.0.0.9"},
            "Service": {"ID": reg["ID"], "Service": reg["Name"], "Tags": reg["Tags"],
                        "Address": reg["Address"], "Port": reg["Port"], "Meta": reg["Meta"]},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing"}],
        });
        let entry: HealthEntry = serde_json::from_value(entry).unwrap();
        assert_eq!(record_of(entry), Some(svc));
    }

    #[test]
    fn foreign_instances_use_the_node_address_and_critical_ones_are_dropped() {
        let entry = |status: &str| {
            serde_json::from_value::<HealthEntry>(json!({
                "Node": {"Address": "10.0.0.9"},
                "Service": {"ID": "web-1", "Service": "web", "Tags": null, "Address": "",
                            "Port": 80, "Meta": {"micro_version": "2"}},
                "Checks": [{"Status": status}],
            }))
            .unwrap()
        };
        let record = record_of(entry("passing")).unwrap();
        assert_eq!(record.version, "2");
        assert_eq!(record.nodes[0].address, "10.0.0.9:80");
        assert!(record_of(entry("critical")).is_none());
    }

    #[test]
    fn addresses_split_and_join() {
        assert_eq!(split_address("h:1"), ("h".to_string(), 1));
        assert_eq!(split_address("[::1]:8"), ("::1".to_string(), 8));
        assert_eq!(split_address("unix-socket"), ("unix-socket".to_string(), 0));
        assert_eq!(join_address("::1", 8), "[::1]:8");
    }
}
