//! The registry of a large organisation, written straight into etcd: thousands of node records
//! as micro's etcd registry stores them (one key per node under `/micro/registry/`), in
//! transactions rather than one registration at a time (etcd puts on a lease slow down with the
//! keys the lease holds; a registration per node would take minutes).

use etcd_client::{Client, DeleteOptions, PutOptions, Txn, TxnOp};
use futures::{StreamExt, TryStreamExt};
use micro_core::registry::{Endpoint, MessageType, Node, Service};

/// The etcd registry's key prefix (`micro_etcd::REGISTRY_PREFIX`).
const PREFIX: &str = "/micro/registry/";

/// etcd's default `--max-txn-ops`: the most puts one transaction may carry.
const TXN_OPS: usize = 128;

/// How many transactions of a fill are in flight at once.
const IN_FLIGHT: usize = 8;

/// How long the fill's lease lives: what a test that dies leaves behind is gone after it.
const LEASE_TTL: i64 = 120;

/// Node `node` of `service` as a micro server registers it: `methods` endpoints with their
/// message types and gRPC paths, and the node metadata micro writes (0.5 KiB of JSON with one
/// method, 1.3 KiB with five).
pub fn node_record(service: &str, node: usize, methods: usize) -> Service {
    let endpoints = ["Create", "Get", "List", "Update", "Delete"]
        .into_iter()
        .take(methods)
        .map(|method| Endpoint {
            name: format!("Catalog.{method}"),
            request: Some(MessageType {
                name: format!("{method}Request"),
                full_name: format!("catalog.v1.{method}Request"),
            }),
            response: Some(MessageType {
                name: format!("{method}Response"),
                full_name: format!("catalog.v1.{method}Response"),
            }),
            metadata: [(
                "grpc_method".to_string(),
                format!("/catalog.v1.Catalog/{method}"),
            )]
            .into(),
        })
        .collect();
    let metadata = [
        ("protocol", "grpc"),
        ("transport", "grpc"),
        ("registry", "etcd"),
        ("server", "micro"),
        ("secure", "false"),
    ];
    Service {
        name: service.to_string(),
        version: "1.0.0".into(),
        metadata: [("owner".to_string(), "team-catalog".to_string())].into(),
        endpoints,
        nodes: vec![Node {
            id: format!("{service}-{node}"),
            address: format!("10.0.{}.{}:50051", node % 250, node % 200 + 1),
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }],
    }
}

/// The services of a run named `run`: `<run>-0000`, `<run>-0001`, ...
pub fn service_names(run: &str, services: usize) -> Vec<String> {
    (0..services).map(|i| format!("{run}-{i:04}")).collect()
}

/// Node records written into etcd by [`fill_etcd`], on one lease.
#[derive(Debug)]
pub struct Filled {
    /// The lease every key is on.
    pub lease: i64,
    /// Bytes of registry JSON written.
    pub bytes: usize,
}

/// Writes `nodes` nodes of each service of `names` (with `methods` endpoints) into etcd at the
/// registry's keys, on one lease of two minutes, in transactions of etcd's largest size, a few
/// at a time.
pub async fn fill_etcd(client: &Client, names: &[String], nodes: usize, methods: usize) -> Filled {
    let lease = client
        .clone()
        .lease_grant(LEASE_TTL, None)
        .await
        .expect("lease")
        .id();
    let mut puts = Vec::new();
    let mut bytes = 0;
    for name in names {
        for node in 0..nodes {
            let record = node_record(name, node, methods);
            let key = format!("{PREFIX}{name}/{}", record.nodes[0].id);
            let value = serde_json::to_string(&record).expect("encode");
            bytes += value.len();
            puts.push(TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
    }
    let batches: Vec<Vec<TxnOp>> = puts.chunks(TXN_OPS).map(<[TxnOp]>::to_vec).collect();
    futures::stream::iter(batches)
        .map(|ops| {
            let mut client = client.clone();
            async move { client.txn(Txn::new().and_then(ops)).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await
        .expect("fill the registry");
    Filled { lease, bytes }
}

/// Deletes every key of the run `run` and the fill's lease.
pub async fn clean_etcd(client: &Client, run: &str, filled: &Filled) {
    let mut client = client.clone();
    client
        .delete(
            format!("{PREFIX}{run}-"),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("clean up");
    client
        .lease_revoke(filled.lease)
        .await
        .expect("revoke the lease");
}
