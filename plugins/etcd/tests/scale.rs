//! Listings larger than one gRPC message may be (tonic's default 4 MiB; issue #17), against the
//! etcd started by `scripts/setup` (127.0.0.1:2379, or `MICRO_ETCD_ADDRESS`): such registries
//! list, a watcher started on them sees what changes next, and a store of large records lists.
//! Registry records are written straight into etcd, as a fleet of servers would have written
//! them, under names unique to the run and on one lease, so a test that dies leaves nothing
//! behind for longer than the lease.

use crate::common;

use std::time::{Duration, Instant};

use common::{address, raw};
use etcd_client::GetOptions;
use futures::StreamExt;
use micro_core::conformance::{PROMPT, unique};
use micro_core::registry::{EventKind, Service, Watcher};
use micro_core::store::{Namespace, Query, Record};
use micro_core::{Registry, Store, with_causes};
use micro_etcd::{EtcdRegistry, EtcdStore, REGISTRY_PREFIX, STORE_PREFIX};
use micro_testkit::large_registry::{clean_etcd, fill_etcd, node_record, service_names};

/// tonic's default limit on one decoded message: the single range response of the whole
/// registry used to exceed it.
const MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

/// The services of the run among `listed`, by name, each with its node count.
fn of_run(listed: &[Service], run: &str) -> Vec<(String, usize)> {
    let mut found: Vec<(String, usize)> = listed
        .iter()
        .filter(|s| s.name.starts_with(&format!("{run}-")))
        .map(|s| (s.name.clone(), s.nodes.len()))
        .collect();
    found.sort();
    found
}

/// Waits for the event `kind` of node `node`, passing over others (the registry is shared).
async fn wait_for(watcher: &mut Watcher, kind: EventKind, node: &str) {
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let event = tokio::time::timeout_at(deadline, watcher.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} of {node} within {PROMPT:?}"))
            .expect("the watch ended")
            .expect("watch event");
        if event.kind == kind && event.service.nodes.iter().any(|n| n.id == node) {
            return;
        }
    }
}

/// 20 000 nodes over 4 000 services: listed whole, and watched from the listing on.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_nodes_list_and_watch() {
    // The registry fills with thousands of keys: alone, so that neither this test's watcher nor
    // another test's wades through another fill, and its printed timings are its own.
    let _alone = common::alone().await;
    let registry = EtcdRegistry::connect(&address())
        .await
        .expect("etcd registry (run scripts/setup)");
    let client = raw().await;
    let run = unique("scale");
    let names = service_names(&run, 4_000);

    let started = Instant::now();
    let filled = fill_etcd(&client, &names, 5, 5).await;
    let bytes = filled.bytes;
    let fill_time = started.elapsed();
    assert!(
        bytes > MESSAGE_LIMIT,
        "the registry must outgrow one message: {bytes} bytes"
    );

    let started = Instant::now();
    let listed = registry.list_services().await.expect("list_services");
    let listing = started.elapsed();
    let found = of_run(&listed, &run);
    assert_eq!(found.len(), names.len(), "every service listed");
    assert!(
        found.iter().all(|(_, nodes)| *nodes == 5),
        "every service with its 5 nodes"
    );

    // Names from the keys alone: every service of the run, once, in order.
    let started = Instant::now();
    let all_names = registry.list_names().await.expect("list_names");
    let naming = started.elapsed();
    let run_names: Vec<&String> = all_names
        .iter()
        .filter(|n| n.starts_with(&format!("{run}-")))
        .collect();
    let mut expected: Vec<&String> = names.iter().collect();
    expected.sort();
    assert_eq!(
        run_names, expected,
        "list_names: each service of the run once"
    );

    let started = Instant::now();
    let mut watcher = registry.watch(None).await.expect("watch");
    let watch_start = started.elapsed();
    let newcomer = node_record(&format!("{run}-new"), 0, 5);
    let node = newcomer.nodes[0].id.clone();
    let started = Instant::now();
    registry
        .register(&newcomer, Duration::from_secs(30))
        .await
        .expect("register");
    wait_for(&mut watcher, EventKind::Create, &node).await;
    let create = started.elapsed();
    let started = Instant::now();
    registry.deregister(&newcomer).await.expect("deregister");
    wait_for(&mut watcher, EventKind::Delete, &node).await;
    let delete = started.elapsed();
    drop(watcher);

    clean_etcd(&client, &run, &filled).await;
    eprintln!(
        "scale: {} services x 5 nodes, {:.1} MiB of JSON: fill {fill_time:?}, \
         list_services {listing:?}, list_names {naming:?}, watch start {watch_start:?}, \
         watch latency create {create:?} delete {delete:?}",
        names.len(),
        bytes as f64 / 1_048_576.0
    );
}

/// The registry of issue #17: 5 000 services × 2 nodes, more JSON than one message may hold.
/// Listing it in one range is refused ("message length too large"), as `list_services` and
/// every watch of all services used to be.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_over_the_message_limit_lists() {
    // The registry fills with thousands of keys: alone, so that neither this test's watcher nor
    // another test's wades through another fill, and its printed timings are its own.
    let _alone = common::alone().await;
    let registry = EtcdRegistry::connect(&address())
        .await
        .expect("etcd registry (run scripts/setup)");
    let client = raw().await;
    let run = unique("over-limit");
    let names = service_names(&run, 5_000);
    let filled = fill_etcd(&client, &names, 2, 1).await;
    let bytes = filled.bytes;
    assert!(
        bytes > MESSAGE_LIMIT,
        "the registry must outgrow one message: {bytes} bytes"
    );
    let whole = client
        .clone()
        .get(REGISTRY_PREFIX, Some(GetOptions::new().with_prefix()))
        .await;

    let started = Instant::now();
    let listed = registry.list_services().await;
    let listing = started.elapsed();
    let watched = registry.watch(None).await.map(drop);
    clean_etcd(&client, &run, &filled).await;
    eprintln!(
        "over the limit: {} services x 2 nodes, {:.1} MiB of JSON: list_services {listing:?}",
        names.len(),
        bytes as f64 / 1_048_576.0
    );

    let refused = whole.expect_err("one range of the whole registry is refused");
    assert!(
        refused.to_string().contains("message length too large"),
        "{refused}"
    );
    let listed = listed.unwrap_or_else(|e| panic!("list_services: {}", with_causes(&e)));
    let found = of_run(&listed, &run);
    assert_eq!(found.len(), names.len(), "every service listed");
    assert!(
        found.iter().all(|(_, nodes)| *nodes == 2),
        "both nodes of each"
    );
    watched.unwrap_or_else(|e| panic!("watch(None): {}", with_causes(&e)));
}

/// Records of 1 MiB of JSON each (as large as etcd's default 1.5 MiB request limit allows): a
/// page of them outgrows one message long before its 500 keys, and is read in smaller pages.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_of_large_records_lists() {
    common::share().await;
    let store = EtcdStore::connect(&address())
        .await
        .expect("etcd store (run scripts/setup)");
    let namespace = Namespace::new(unique("scale"), "large");
    // 768 KiB of bytes is 1 MiB of base64 in the record's envelope.
    let value = vec![7u8; 768 * 1024];
    let keys: Vec<String> = (0..5).map(|i| format!("blob-{i}")).collect();
    for key in &keys {
        store
            .write(Record::new(key.as_str(), value.clone()), &namespace)
            .await
            .expect("write");
    }

    let whole = raw()
        .await
        .get(
            format!("{STORE_PREFIX}{}/", namespace.database),
            Some(GetOptions::new().with_prefix()),
        )
        .await;
    let all = Query::prefix().in_namespace(namespace.clone());
    let listed = store.list("", &all).await;
    let read = store.read("", &all).await;
    for key in &keys {
        store.delete(key, &namespace).await.expect("clean up");
    }

    let refused = whole.expect_err("one range of the whole table is refused");
    assert!(
        refused.to_string().contains("message length too large"),
        "{refused}"
    );
    let listed = listed.unwrap_or_else(|e| panic!("list: {}", with_causes(&e)));
    assert_eq!(listed, keys);
    let read = read.unwrap_or_else(|e| panic!("read: {}", with_causes(&e)));
    assert_eq!(read.len(), keys.len());
    assert!(
        read.iter().all(|r| r.value.len() == value.len()),
        "every record whole"
    );
}
