//! A NATS server killed (SIGKILL) and started again on the same port and store while messages
//! and writes are in flight: clients reconnect by themselves, every message published after the
//! reconnection arrives, every store write acknowledged before, during or after is still there,
//! and config and registry watchers go on. Runs its own `nats-server -js` (needs the binary on
//! `PATH`).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::server::PrivateNats;
use micro_core::broker::{Message, SubscribeOptions, handler};
use micro_core::conformance::{PROMPT, eventually, next};
use micro_core::registry::{EventKind, Node, Service};
use micro_core::store::{Namespace, Query, Record};
use micro_core::{Broker, Config, Registry, Store};
use micro_nats::{NatsBroker, NatsConfig, NatsRegistry, NatsStore};
use serde_json::json;

/// How long the clients may take to notice the restart and reconnect (their backoff grows to a
/// few seconds), on top of the usual promptness.
const RECONNECT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn clients_ride_out_a_server_restart() {
    let mut server = PrivateNats::start();
    let address = server.address.clone();
    let publisher = NatsBroker::connect(&address).await.expect("publisher");
    let subscriber = NatsBroker::connect(&address).await.expect("subscriber");
    let store = NatsStore::connect(&address).await.expect("store");
    let config = NatsConfig::connect(&address).await.expect("config");
    let registry = NatsRegistry::connect(&address).await.expect("registry");

    // A queue-group subscriber recording every body it handles.
    let topic = "restart.jobs";
    let received: Arc<Mutex<BTreeMap<Bytes, usize>>> = Arc::default();
    let sink = received.clone();
    let subscription = subscriber
        .subscribe(
            topic,
            handler(move |message: Message| {
                let sink = sink.clone();
                async move {
                    *sink.lock().expect("lock").entry(message.body).or_default() += 1;
                    Ok(())
                }
            }),
            SubscribeOptions::queue("workers"),
        )
        .await
        .expect("subscribe");
    let got = |body: &str| {
        received
            .lock()
            .expect("lock")
            .contains_key(&Bytes::from(body.to_string()))
    };
    let mut config_watch = config.watch("app.mode").await.expect("config watch");
    let mut registry_watch = registry.watch(Some("svc")).await.expect("registry watch");

    // Before: messages arrive, writes are acknowledged.
    for i in 0..50 {
        publisher
            .publish(topic, Message::new(format!("before-{i}")))
            .await
            .expect("publish before");
    }
    eventually(PROMPT, "the messages published before", || async {
        (0..50).all(|i| got(&format!("before-{i}")))
    })
    .await;
    let ns = Namespace::new("restart", "t");
    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    for i in 0..50 {
        let key = format!("before-{i:03}");
        store
            .write(Record::new(key.clone(), key.clone()), &ns)
            .await
            .expect("write before");
        acknowledged.lock().expect("lock").insert(key);
    }

    // Mid-stream: a publisher and a writer keep going while the server is killed and restarted.
    let running = Arc::new(AtomicBool::new(true));
    let store = Arc::new(store);
    let writer = {
        let (store, ns, running, acknowledged) = (
            store.clone(),
            ns.clone(),
            running.clone(),
            acknowledged.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while running.load(Ordering::SeqCst) {
                let key = format!("during-{i:05}");
                if store
                    .write(Record::new(key.clone(), key.clone()), &ns)
                    .await
                    .is_ok()
                {
                    acknowledged.lock().expect("lock").insert(key);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let chatter = {
        let (publisher, running) = (publisher.clone(), running.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while running.load(Ordering::SeqCst) {
                // Core NATS keeps nothing while the server is down: these may be lost.
                let _ = publisher
                    .publish(topic, Message::new(format!("during-{i}")))
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    eventually(PROMPT, "writes in flight", || async {
        acknowledged.lock().expect("lock").len() > 60
    })
    .await;
    server.kill();
    server.restart();

    // The clients find the server again: a probe through the broker gets through, and a write
    // is acknowledged.
    let mut probe = 0;
    eventually(
        RECONNECT,
        "the subscriber hears the publisher again",
        || {
            probe += 1;
            let body = format!("probe-{probe}");
            let publisher = publisher.clone();
            let got = &got;
            async move {
                let _ = publisher.publish(topic, Message::new(body)).await;
                (1..=probe).any(|p| got(&format!("probe-{p}")))
            }
        },
    )
    .await;
    let before = acknowledged.lock().expect("lock").len();
    eventually(RECONNECT, "writes are acknowledged again", || async {
        acknowledged.lock().expect("lock").len() > before + 20
    })
    .await;
    running.store(false, Ordering::SeqCst);
    writer.await.expect("writer");
    chatter.await.expect("publisher");

    // After: every message published now arrives, once.
    for i in 0..100 {
        publisher
            .publish(topic, Message::new(format!("after-{i}")))
            .await
            .expect("publish after the restart");
    }
    eventually(
        PROMPT,
        "every message published after the restart",
        || async { (0..100).all(|i| got(&format!("after-{i}"))) },
    )
    .await;
    let duplicates: Vec<_> = received
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(body, _)| body.clone())
        .collect();
    assert!(duplicates.is_empty(), "delivered twice: {duplicates:?}");

    // Nothing acknowledged is lost: every write that returned Ok reads back.
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let stored: BTreeSet<String> = store
        .list("", &Query::prefix().in_namespace(ns.clone()))
        .await
        .expect("list after the restart")
        .into_iter()
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    for key in ["before-000", "before-049"] {
        let record = store
            .read(key, &Query::default().in_namespace(ns.clone()))
            .await
            .expect("read after the restart");
        assert_eq!(record[0].value, key);
    }

    // The watchers followed the server back.
    config.set("app.mode", json!("after")).await.expect("set");
    assert_eq!(
        next(&mut config_watch, "config change after the restart")
            .await
            .expect("watch"),
        Some(json!("after"))
    );
    let svc = Service {
        name: "svc".into(),
        nodes: vec![Node {
            id: "svc-1".into(),
            address: "127.0.0.1:1".into(),
            metadata: Default::default(),
        }],
        ..Default::default()
    };
    registry
        .register(&svc, Duration::from_secs(30))
        .await
        .expect("register");
    let event = next(&mut registry_watch, "registry change after the restart")
        .await
        .expect("watch");
    assert_eq!(
        (event.kind, event.service.nodes[0].id.as_str()),
        (EventKind::Create, "svc-1")
    );
    subscription.unsubscribe().await.expect("unsubscribe");
    eprintln!(
        "restart: {} acknowledged writes kept; log tail:\n{}",
        acknowledged.len(),
        server
            .log()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
