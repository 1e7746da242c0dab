//! What is particular to the NATS registry, against the real NATS (`MICRO_NATS_ADDRESS`, default
//! `nats://127.0.0.1:4222`): go-micro's JSON per node under escaped keys, deadlines in a header,
//! the sweeper, and watchers seeing lapses by their own timers. Buckets are deleted at the end.

use crate::common;

use std::time::Duration;

use micro_core::Registry;
use micro_core::conformance::{PROMPT, eventually, next};
use micro_core::registry::{EventKind, Node, Service};
use micro_nats::{EXPIRES_AT_HEADER, NatsRegistry};

fn service(name: &str, nodes: &[&str]) -> Service {
    Service {
        name: name.into(),
        version: "1.0.0".into(),
        metadata: [("team".to_string(), "a".to_string())].into(),
        endpoints: Vec::new(),
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, id)| Node {
                id: id.to_string(),
                address: format!("127.0.0.1:{}", 5000 + i),
                metadata: Default::default(),
            })
            .collect(),
    }
}

/// One key per node, `<service>.<node>` escaped, holding go-micro's service JSON with that one
/// node, and the deadline in a header.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_are_go_micro_json_under_escaped_keys() {
    let bucket = common::unique_bucket("registry");
    let registry = common::registry(&bucket).await;
    let svc = service("go.micro.greeter", &["g-1", "g-2"]);
    registry
        .register(&svc, Duration::from_secs(30))
        .await
        .expect("register");

    let raw = common::raw_bucket(&bucket).await;
    let value = raw
        .get("go=2Emicro=2Egreeter.g-1")
        .await
        .expect("get")
        .expect("the node's key");
    let json: serde_json::Value = serde_json::from_slice(&value).expect("JSON");
    assert_eq!(json["name"], "go.micro.greeter");
    assert_eq!(json["version"], "1.0.0");
    assert_eq!(json["metadata"]["team"], "a");
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json["nodes"][0]["id"], "g-1");
    assert_eq!(json["nodes"][0]["address"], "127.0.0.1:5000");
    let message = raw
        .stream
        .get_last_raw_message_by_subject(&format!("$KV.{bucket}.go=2Emicro=2Egreeter.g-2"))
        .await
        .expect("the other node's key");
    assert!(
        message.headers.get_last(EXPIRES_AT_HEADER).is_some(),
        "{:?}",
        message.headers
    );
    assert_eq!(
        registry
            .get_service("go.micro.greeter")
            .await
            .expect("get_service"),
        std::slice::from_ref(&svc)
    );
    registry.deregister(&svc).await.expect("deregister");
    assert!(
        raw.get("go=2Emicro=2Egreeter.g-1")
            .await
            .expect("get")
            .is_none()
    );
}

/// The sweeper deletes the record of a node that lapsed; a node heartbeating stays.
#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_deletes_lapsed_nodes() {
    let bucket = common::unique_bucket("registry");
    let registry = NatsRegistry::connect_with_bucket(&common::address(), &bucket)
        .await
        .expect("nats registry")
        .with_sweep_interval(Some(Duration::from_millis(200)));
    let registry = common::cleaned(registry, format!("KV_{bucket}"));
    let lapsing = service("svc", &["lapsing"]);
    registry
        .register(&lapsing, Duration::from_millis(300))
        .await
        .expect("register");
    let raw = common::raw_bucket(&bucket).await;
    assert!(raw.get("svc.lapsing").await.expect("get").is_some());
    eventually(PROMPT, "the lapsed node's record is swept", || async {
        raw.get("svc.lapsing").await.expect("get").is_none()
    })
    .await;
    assert!(registry.get_service("svc").await.expect("get").is_empty());
}

/// With no sweeper at all, readers drop a lapsed node and a watcher reports its Delete at the
/// deadline, by its own timer; `sweep` then deletes the record.
#[tokio::test(flavor = "multi_thread")]
async fn watchers_see_lapses_without_the_sweeper() {
    let bucket = common::unique_bucket("registry");
    let registry = NatsRegistry::connect_with_bucket(&common::address(), &bucket)
        .await
        .expect("nats registry")
        .with_sweep_interval(None);
    let registry = common::cleaned(registry, format!("KV_{bucket}"));
    let mut watcher = registry.watch(Some("svc")).await.expect("watch");
    let node = service("svc", &["n"]);
    registry
        .register(&node, Duration::from_millis(500))
        .await
        .expect("register");
    let created = next(&mut watcher, "create").await.expect("event");
    assert_eq!(created.kind, EventKind::Create);
    let deleted = next(&mut watcher, "the lapse").await.expect("event");
    assert_eq!(deleted.kind, EventKind::Delete);
    assert_eq!(deleted.service, node);
    assert!(registry.get_service("svc").await.expect("get").is_empty());
    let raw = common::raw_bucket(&bucket).await;
    assert!(
        raw.get("svc.n").await.expect("get").is_some(),
        "still stored"
    );
    assert_eq!(registry.inner.sweep().await.expect("sweep"), 1);
    assert!(raw.get("svc.n").await.expect("get").is_none());
    // Registering again after the lapse is a new node to the watcher.
    registry
        .register(&node, Duration::from_secs(30))
        .await
        .expect("register again");
    let again = next(&mut watcher, "create again").await.expect("event");
    assert_eq!(again.kind, EventKind::Create);
}
