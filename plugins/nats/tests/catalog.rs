//! `install` registers `nats` for the Registry, Broker, Store and Config, and each factory
//! connects to its component's address, failing with an error naming it; on a server without
//! JetStream the key-value components say so, and the broker works on core NATS alone.

use crate::common;

use std::sync::{Arc, Mutex};

use common::server::PrivateNats;
use micro_core::broker::{Message, Reject, SubscribeOptions, handler};
use micro_core::conformance::{PROMPT, eventually, next};
use micro_core::store::{Namespace, Record};
use micro_core::{Broker, Store};
use micro_nats::{NatsBroker, NatsConfig, NatsRegistry, NatsStore, REASON_HEADER};

use micro_core::catalog::Catalog;

fn catalog() -> Catalog {
    let mut catalog = Catalog::new();
    micro_nats::install(&mut catalog);
    catalog
}

#[tokio::test(flavor = "multi_thread")]
async fn every_component_is_installed_as_nats() {
    let catalog = catalog();
    for names in [
        catalog.registry_names(),
        catalog.broker_names(),
        catalog.store_names(),
        catalog.config_names(),
    ] {
        assert!(names.contains(&"nats".to_string()), "{names:?}");
    }
    // The broker and the store create nothing on the server until used.
    let options = micro_testkit::test_options("catalog-test");
    let broker = catalog
        .broker_named("nats", Some(common::address()), &options)
        .await
        .expect("broker");
    assert_eq!(broker.name(), "nats");
    let store = catalog
        .store_named("nats", Some(common::address()), &options)
        .await
        .expect("store");
    assert_eq!(store.name(), "nats");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_address_is_an_error_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let address = format!("nats://127.0.0.1:{port}");
    let catalog = catalog();
    let options = micro_testkit::test_options("catalog-test");
    let errors = [
        catalog
            .registry_named("nats", Some(address.clone()), &options)
            .await
            .err()
            .map(|e| e.to_string()),
        catalog
            .broker_named("nats", Some(address.clone()), &options)
            .await
            .err()
            .map(|e| e.to_string()),
        catalog
            .store_named("nats", Some(address.clone()), &options)
            .await
            .err()
            .map(|e| e.to_string()),
        catalog
            .config_named("nats", Some(address.clone()), &options)
            .await
            .err()
            .map(|e| e.to_string()),
    ];
    for error in errors {
        let error = error.expect("nothing listens there");
        assert!(error.contains(&address), "{error}");
    }
}

/// Without JetStream the Registry and Config fail to connect and the Store to write, naming the
/// address and JetStream; the Broker publishes, subscribes and dead-letters on core NATS.
#[tokio::test(flavor = "multi_thread")]
async fn without_jetstream_only_the_broker_works() {
    let server = PrivateNats::start_without_jetstream();
    let address = server.address.clone();
    let says_so = |error: micro_core::Error| {
        let text = error.to_string();
        assert!(
            text.contains(&address) && text.contains("JetStream"),
            "{text}"
        );
    };
    says_so(NatsRegistry::connect(&address).await.expect_err("registry"));
    says_so(NatsConfig::connect(&address).await.expect_err("config"));
    let store = NatsStore::connect(&address).await.expect("store connects");
    says_so(
        store
            .write(Record::new("k", "v"), &Namespace::default())
            .await
            .expect_err("store write"),
    );

    let broker = NatsBroker::connect(&address).await.expect("broker");
    let client = async_nats::connect(address.as_str())
        .await
        .expect("connect");
    let mut dead_letters =
        common::subscribe_synced(&client, broker.dead_letter_subject("plain.jobs")).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let sink = handled.clone();
    let subscription = broker
        .subscribe(
            "plain.jobs",
            handler(move |m: Message| {
                let sink = sink.clone();
                async move {
                    if m.body == "bad" {
                        return Err(Box::new(Reject("unreadable".into())) as _);
                    }
                    sink.lock().expect("lock").push(m.body);
                    Ok(())
                }
            }),
            SubscribeOptions::queue("q"),
        )
        .await
        .expect("subscribe");
    broker
        .publish("plain.jobs", Message::new("bad"))
        .await
        .expect("publish");
    let dead = next(&mut dead_letters, "the dead letter on core NATS").await;
    assert_eq!(dead.payload, "bad");
    let reason = dead
        .headers
        .and_then(|h| h.get_last(REASON_HEADER).map(|v| v.as_str().to_string()));
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("unreadable")),
        "{reason:?}"
    );
    broker
        .publish("plain.jobs", Message::new("good"))
        .await
        .expect("publish");
    eventually(PROMPT, "the good message", || async {
        !handled.lock().expect("lock").is_empty()
    })
    .await;
    subscription.unsubscribe().await.expect("unsubscribe");
}
