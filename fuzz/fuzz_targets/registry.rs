//! The registry's stored-JSON decoder: a `micro_core::registry::Service` record as the etcd and
//! nats plugins store one per node (and consul in a tag), read back from a backend anyone with
//! access to it could have written, then validated and merged into what `get_service` returns.
//!
//! Input: the stored value. Invariants, for a record that decodes: it re-encodes, and that JSON
//! decodes to an equal record; `validate` answers (and accepts nothing with an empty or
//! `/`-carrying name or node id, or a node without an address); split into one record per node
//! and merged back (`merge_nodes`), the nodes are the same, sorted by id; `diff_nodes` from
//! nothing creates each node once.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use micro_core::registry::{EventKind, Service, diff_nodes, merge_nodes};

fuzz_target!(|data: &[u8]| {
    let Ok(service) = serde_json::from_slice::<Service>(data) else {
        return;
    };
    let json = serde_json::to_vec(&service).expect("a decoded record encodes");
    let again: Service = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "re-encoded record does not decode ({e}): {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(again, service, "the record changed through JSON");

    if service.validate().is_ok() {
        assert!(!service.name.trim().is_empty() && !service.name.contains('/'));
        for node in &service.nodes {
            assert!(!node.id.is_empty() && !node.id.contains('/') && !node.address.is_empty());
        }
    }

    // One record per node, as key-per-node backends store them, merged back.
    let records: Vec<Service> = service
        .nodes
        .iter()
        .map(|node| service.with_node(node.clone()))
        .collect();
    let merged = merge_nodes(records.clone());
    if service.nodes.is_empty() {
        assert!(merged.is_empty());
    } else {
        assert_eq!(
            merged.len(),
            1,
            "one name and version merge into one service"
        );
        let mut expected = service.nodes.clone();
        expected.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(merged[0].nodes, expected);
        assert_eq!(merged[0].without_nodes(), service.without_nodes());
    }

    // Keyed by position (node ids may repeat in a record nobody validated).
    let after: BTreeMap<usize, Service> = records.into_iter().enumerate().collect();
    let events = diff_nodes(&BTreeMap::new(), &after);
    assert_eq!(events.len(), after.len());
    assert!(events.iter().all(|e| e.kind == EventKind::Create));
});
