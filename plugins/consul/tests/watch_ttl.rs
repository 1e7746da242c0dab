//! A watcher of all services sees a node appear and, once its TTL check goes critical, leave.

mod support;

use std::time::Duration;

use futures::StreamExt;
use micro_consul::ConsulRegistry;
use micro_core::Registry;
use micro_core::registry::{EventKind, Node, Service};

async fn next_event(
    watcher: &mut micro_core::registry::Watcher,
    name: &str,
) -> micro_core::registry::Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(15), watcher.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("no watch error");
        if event.service.name == name {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_appears_then_lapses_when_its_ttl_check_goes_critical() {
    let address = support::backend().await;
    let registry = ConsulRegistry::new(Some(&address)).expect("registry");
    let name = format!("ttl-watch-{:08x}", std::process::id());
    let service = Service {
        name: name.clone(),
        version: "1.0.0".into(),
        nodes: vec![Node {
            id: format!("{name}-1"),
            address: "127.0.0.1:4000".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut watcher = registry.watch(None).await.expect("watch all");
    registry
        .register(&service, Duration::from_secs(1))
        .await
        .expect("register");

    let created = next_event(&mut watcher, &name).await;
    assert_eq!(created.kind, EventKind::Create);
    assert_eq!(
        created.service, service,
        "the event carries the registered record"
    );
    assert_eq!(
        registry.get_service(&name).await.expect("get"),
        vec![service.clone()]
    );

    // No heartbeat: the TTL check goes critical, the node drops out of `?passing`.
    let deleted = next_event(&mut watcher, &name).await;
    assert_eq!(deleted.kind, EventKind::Delete);
    assert_eq!(deleted.service.nodes[0].id, format!("{name}-1"));
    assert!(registry.get_service(&name).await.expect("get").is_empty());
    assert!(
        !registry
            .list_services()
            .await
            .expect("list")
            .iter()
            .any(|s| s.name == name)
    );

    // A heartbeat after the lapse registers it again (the check is critical, not gone).
    registry
        .register(&service, Duration::from_secs(30))
        .await
        .expect("register again");
    assert_eq!(
        next_event(&mut watcher, &name).await.kind,
        EventKind::Create
    );
    registry.deregister(&service).await.expect("deregister");
    assert_eq!(
        next_event(&mut watcher, &name).await.kind,
        EventKind::Delete
    );
}
