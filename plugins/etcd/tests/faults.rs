//! Bad input and faults, against the etcd started by `scripts/setup` (127.0.0.1:2379, or
//! `MICRO_ETCD_ADDRESS`): an unreachable etcd, malformed config values put behind the plugin's
//! back, a lease revoked behind the registry's back. Watches past compactions and cuts are in
//! `watch.rs`.

use crate::common;

use std::time::Duration;

use common::{address, raw, service};
use etcd_client::DeleteOptions;
use micro_core::conformance::{PROMPT, eventually, next, unique};
use micro_core::{Config, Registry};
use micro_etcd::{EtcdConfig, EtcdRegistry, REGISTRY_PREFIX};
use micro_testkit::{error_naming, prompt_error};
use serde_json::json;

#[tokio::test]
async fn unreachable_etcd_is_a_prompt_error_naming_the_address() {
    prompt_error(
        Duration::from_secs(10),
        &["127.0.0.1:1"],
        EtcdRegistry::connect("127.0.0.1:1"),
    )
    .await;
    error_naming(
        &["127.0.0.1:1", "127.0.0.1:2"],
        EtcdConfig::connect("127.0.0.1:1, 127.0.0.1:2"),
    )
    .await;

    let mut catalog = micro_core::Catalog::new();
    micro_etcd::install(&mut catalog);
    assert!(catalog.registry_names().contains(&"etcd".to_string()));
    assert!(catalog.store_names().contains(&"etcd".to_string()));
    assert!(catalog.config_names().contains(&"etcd".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_config_value_is_reported_and_the_last_good_one_kept() {
    common::share().await;
    let prefix = format!("/micro-test/{}/config/", unique("faults"));
    let config = EtcdConfig::connect_with_prefix(&address(), &prefix)
        .await
        .expect("config");
    let mut client = raw().await;

    // Written by hand, as with `etcdctl put <prefix>greeter/greeting '"Hi"'`.
    client
        .put(format!("{prefix}greeter/greeting"), r#""Hi""#, None)
        .await
        .expect("raw put");
    assert_eq!(
        config.get("greeter.greeting").await.expect("get"),
        Some(json!("Hi"))
    );

    let mut watcher = config.watch("greeter").await.expect("watch");
    let bad_key = format!("{prefix}greeter/greeting");
    client
        .put(bad_key.as_str(), "Hi there {", None)
        .await
        .expect("raw put malformed");

    let err = config
        .get("greeter.greeting")
        .await
        .expect_err("a malformed value is an error");
    assert!(
        err.to_string().contains(&bad_key),
        "get names the key: {err}"
    );
    let seen = next(&mut watcher, "malformed value")
        .await
        .expect_err("the watcher is told");
    assert!(
        seen.to_string().contains(&bad_key),
        "the watch error names the key: {seen}"
    );

    // The malformed value did not reach watchers as a change; the next good one does.
    client
        .put(bad_key.as_str(), r#""Hello""#, None)
        .await
        .expect("raw put good");
    let value = next(&mut watcher, "fixed value").await.expect("watch");
    assert_eq!(value, Some(json!({"greeting": "Hello"})));
    assert_eq!(
        config.get("greeter.greeting").await.expect("get"),
        Some(json!("Hello"))
    );

    client
        .delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("cleanup");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_lease_is_replaced_by_the_registry_itself() {
    common::share().await;
    let registry = EtcdRegistry::connect(&address()).await.expect("registry");
    let name = unique("faults-lease");
    let svc = service(&name, &format!("{name}-1"));
    let key = format!("{REGISTRY_PREFIX}{name}/{name}-1");
    let ttl = Duration::from_secs(6);
    registry.register(&svc, ttl).await.expect("register");

    let mut client = raw().await;
    let lease_of = |response: etcd_client::GetResponse| response.kvs().first().map(|kv| kv.lease());
    let lease = lease_of(client.get(key.as_str(), None).await.expect("get")).expect("registered");
    client
        .lease_revoke(lease)
        .await
        .expect("revoke behind the registry's back");
    assert!(
        client
            .get(key.as_str(), None)
            .await
            .expect("get")
            .kvs()
            .is_empty(),
        "revoking deletes"
    );

    // The keeper notices at its next keep-alive (every TTL/3) and puts the node again.
    eventually(ttl + PROMPT, "node registered again", || {
        let mut client = client.clone();
        let key = key.clone();
        async move {
            let response = client.get(key.as_str(), None).await.expect("get");
            response
                .kvs()
                .first()
                .is_some_and(|kv| kv.lease() != lease && kv.lease() != 0)
        }
    })
    .await;
    assert_eq!(
        registry.get_service(&name).await.expect("get_service"),
        vec![svc.clone()]
    );
    registry.deregister(&svc).await.expect("deregister");
}
