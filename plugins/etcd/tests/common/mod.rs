//! What the micro-etcd tests share: the etcd under test, a raw client behind the plugins'
//! backs, and a one-node service.

#![allow(dead_code, unreachable_pub)]

use etcd_client::Client;
use micro_core::registry::{Node, Service};

/// The etcd under test: `MICRO_ETCD_ADDRESS`, else the one `scripts/setup` starts.
pub fn address() -> String {
    std::env::var("MICRO_ETCD_ADDRESS").unwrap_or_else(|_| micro_etcd::DEFAULT_ADDRESS.into())
}

/// A plain etcd client, acting behind the plugins' backs.
pub async fn raw() -> Client {
    let endpoints: Vec<String> = address().split(',').map(|e| e.trim().to_string()).collect();
    Client::connect(endpoints, None)
        .await
        .expect("raw etcd client (run scripts/setup)")
}

/// Service `name` with one node `node`.
pub fn service(name: &str, node: &str) -> Service {
    Service {
        name: name.into(),
        version: "1.0.0".into(),
        nodes: vec![Node {
            id: node.into(),
            address: "127.0.0.1:50051".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
