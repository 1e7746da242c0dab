//! Faults: an unreachable agent, a refused token, garbage from the server, a blocking query cut
//! off mid-response. None panics; each error says what happened and where.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use micro_consul::{ConsulConfig, ConsulRegistry, ConsulStore};
use micro_core::registry::{EventKind, Node, Service};
use micro_core::store::{Namespace, Query, Record};
use micro_core::{Config, Registry, Store};
use serde_json::json;
use support::{ConsulApiDouble, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn service(name: &str) -> Service {
    Service {
        name: name.into(),
        version: "1".into(),
        nodes: vec![Node {
            id: format!("{name}-1"),
            address: "127.0.0.1:4000".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A port nothing listens on.
async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

/// A server answering every request with `response` (raw bytes, then close).
async fn garbage_server(response: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream.write_all(response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    address
}

#[tokio::test]
async fn an_unreachable_agent_is_an_error_naming_the_address() {
    let address = dead_address().await;
    let registry = ConsulRegistry::new(&address).unwrap();
    let err = registry.get_service("x").await.unwrap_err().to_string();
    assert!(
        err.contains(&address) && err.contains("cannot reach"),
        "{err}"
    );
    let err = registry
        .register(&service("x"), Duration::from_secs(10))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&address), "{err}");
    assert!(registry.watch(None).await.is_err());
    let store = ConsulStore::new(&address).unwrap();
    let err = store
        .read("k", &Query::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&address) && err.starts_with("consul store"),
        "{err}"
    );
    let config = ConsulConfig::new(&address).unwrap();
    let err = config.get("a.b").await.unwrap_err().to_string();
    assert!(
        err.contains(&address) && err.starts_with("consul config"),
        "{err}"
    );
}

#[tokio::test]
async fn a_refused_token_says_so() {
    let double = ConsulApiDouble::start().await;
    double.require_token("right");
    let address = double.address();
    let wrong = ConsulRegistry::new(&address)
        .unwrap()
        .with_token(Some("wrong".into()));
    let err = wrong
        .register(&service("acl"), Duration::from_secs(10))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ACL token was refused") && err.contains("403"),
        "{err}"
    );
    let err = ConsulStore::new(&address)
        .unwrap()
        .with_token(None)
        .read("k", &Query::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ACL token was refused"), "{err}");
    let right = ConsulRegistry::new(&address)
        .unwrap()
        .with_token(Some("right".into()));
    right
        .register(&service("acl"), Duration::from_secs(10))
        .await
        .expect("the right token works");
    assert_eq!(right.get_service("acl").await.unwrap().len(), 1);
}

#[tokio::test]
async fn malformed_or_unexpected_answers_are_errors_not_panics() {
    let answers: [&'static [u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-Consul-Index: 7\r\n\r\n{not json",
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Consul-Index: 7\r\n\r\n{\"a\":1}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 26\r\nX-Consul-Index: 7\r\n\r\n[{\"Key\":5,\"Service\":null}]",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nmaybe",
        b"this is not HTTP at all\r\n\r\n",
    ];
    for answer in answers {
        let address = garbage_server(answer).await;
        let registry = ConsulRegistry::new(&address).unwrap();
        assert!(
            registry.get_service("x").await.is_err(),
            "get_service on {answer:?}"
        );
        assert!(
            registry.list_services().await.is_err(),
            "list_services on {answer:?}"
        );
        assert!(
            registry.watch(Some("x")).await.is_err(),
            "watch on {answer:?}"
        );
        let _ = registry
            .register(&service("x"), Duration::from_secs(10))
            .await;
        let _ = registry.deregister(&service("x")).await;
        let store = ConsulStore::new(&address).unwrap();
        assert!(
            store.read("k", &Query::default()).await.is_err(),
            "store read on {answer:?}"
        );
        assert!(
            store.list("", &Query::default()).await.is_err(),
            "store list on {answer:?}"
        );
        assert!(
            store
                .write(Record::new("k", "v"), &Namespace::default())
                .await
                .is_err(),
            "store write on {answer:?}"
        );
        let config = ConsulConfig::new(&address).unwrap();
        assert!(config.get("a").await.is_err(), "config get on {answer:?}");
        assert!(
            config.watch("a").await.is_err(),
            "config watch on {answer:?}"
        );
    }
    let address = garbage_server(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{not json").await;
    let err = ConsulRegistry::new(&address)
        .unwrap()
        .get_service("x")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("malformed") && err.contains(&address), "{err}");
}

#[tokio::test]
async fn malformed_values_in_kv_name_their_key_and_watchers_keep_the_last_good_tree() {
    let double = ConsulApiDouble::start().await;
    let address = double.address();
    let config = ConsulConfig::new(&address).unwrap();
    config.set("app.port", json!(8080)).await.unwrap();
    let mut watcher = config.watch("app").await.unwrap();
    raw(
        &address,
        "PUT",
        "/v1/kv/micro/config/app/bad",
        b"{oops",
        &[],
    )
    .await;
    let err = config.get("app").await.unwrap_err().to_string();
    assert!(err.contains("micro/config/app/bad"), "{err}");
    let seen = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        seen.unwrap_err()
            .to_string()
            .contains("micro/config/app/bad")
    );
    raw(&address, "DELETE", "/v1/kv/micro/config/app/bad", b"", &[]).await;
    config.set("app.port", json!(9090)).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.unwrap(), Some(json!({"port": 9090})));

    raw(
        &address,
        "PUT",
        "/v1/kv/micro/store/micro/micro/raw",
        b"not an envelope",
        &[],
    )
    .await;
    let store = ConsulStore::new(&address).unwrap();
    let err = store
        .read("raw", &Query::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("micro/store/micro/micro/raw"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_query_cut_off_mid_response_resumes() {
    let double = ConsulApiDouble::start().await;
    let address = double.address();
    let registry: Arc<dyn Registry> = Arc::new(ConsulRegistry::new(&address).unwrap());
    let mut watcher = registry.watch(Some("cut")).await.unwrap();
    let config = ConsulConfig::new(&address).unwrap();
    let mut config_watcher = config.watch("cut").await.unwrap();
    double.cut_blocking_responses(4);
    registry
        .register(&service("cut"), Duration::from_secs(30))
        .await
        .unwrap();
    config.set("cut.x", json!(1)).await.unwrap();

    // Errors may be reported while it retries; the change arrives.
    let event = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match watcher.next().await.expect("the watch goes on") {
                Ok(event) => return event,
                Err(e) => eprintln!("reported while resuming: {e}"),
            }
        }
    })
    .await
    .expect("the registry watch resumed");
    assert_eq!(event.kind, EventKind::Create);
    let value = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match config_watcher.next().await.expect("the watch goes on") {
                Ok(value) => return value,
                Err(e) => eprintln!("reported while resuming: {e}"),
            }
        }
    })
    .await
    .expect("the config watch resumed");
    assert_eq!(value, Some(json!({"x": 1})));
    assert_eq!(
        double.pending_cuts(),
        0,
        "the double did cut blocking answers off"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_watcher_ends_its_blocking_queries() {
    let double = ConsulApiDouble::start().await;
    let registry = ConsulRegistry::new(&double.address()).unwrap();
    let watcher = registry.watch(None).await.unwrap();
    registry
        .register(&service("dropped"), Duration::from_secs(30))
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while double.waiting_queries() < 2 {
        assert!(
            tokio::time::Instant::now() < until,
            "the watch holds a catalog and a service query"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(watcher);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while double.waiting_queries() > 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "queries still held: {}",
            double.waiting_queries()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
