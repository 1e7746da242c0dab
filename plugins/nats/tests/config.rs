//! What is particular to the NATS config, against the real NATS (`MICRO_NATS_ADDRESS`, default
//! `nats://127.0.0.1:4222`): one key per leaf holding JSON, edits by a plain NATS client reaching
//! `get` and watchers, and malformed values reported naming their key. Buckets are deleted at
//! the end.

use crate::common;

use micro_core::Config;
use micro_core::conformance::{PROMPT, eventually, next};
use serde_json::json;

/// Each leaf is a key (segments escaped) holding its JSON; objects have no key of their own.
#[tokio::test(flavor = "multi_thread")]
async fn leaves_are_keys_holding_json() {
    let bucket = common::unique_bucket("config");
    let config = common::config(&bucket).await;
    config
        .set(
            "greeter",
            json!({"greeting": "Hi", "a.b": 1, "limits": {"rps": 10}, "tags": ["x"]}),
        )
        .await
        .expect("set");
    let raw = common::raw_bucket(&bucket).await;
    let value = |key: &'static str| {
        let raw = raw.clone();
        async move {
            raw.get(key)
                .await
                .expect("get")
                .map(|v| serde_json::from_slice::<serde_json::Value>(&v).expect("JSON"))
        }
    };
    assert_eq!(value("greeter.greeting").await, Some(json!("Hi")));
    assert_eq!(value("greeter.a=2Eb").await, Some(json!(1)));
    assert_eq!(value("greeter.limits.rps").await, Some(json!(10)));
    assert_eq!(value("greeter.tags").await, Some(json!(["x"])));
    assert_eq!(
        value("greeter.limits").await,
        None,
        "objects are not stored"
    );
    assert_eq!(
        config.get("greeter").await.expect("get"),
        Some(json!({"greeting": "Hi", "a.b": 1, "limits": {"rps": 10}, "tags": ["x"]}))
    );
}

/// A value put by a plain NATS client (`nats kv put`) is read by `get` and reaches watchers.
#[tokio::test(flavor = "multi_thread")]
async fn edits_by_hand_reach_get_and_watchers() {
    let bucket = common::unique_bucket("config");
    let config = common::config(&bucket).await;
    let mut watcher = config.watch("greeter.greeting").await.expect("watch");
    let raw = common::raw_bucket(&bucket).await;
    raw.put("greeter.greeting", "\"Howdy\"".into())
        .await
        .expect("raw put");
    assert_eq!(
        next(&mut watcher, "the hand-made change")
            .await
            .expect("watch"),
        Some(json!("Howdy"))
    );
    assert_eq!(
        config.get("greeter").await.expect("get"),
        Some(json!({"greeting": "Howdy"}))
    );
    raw.delete("greeter.greeting").await.expect("raw delete");
    assert_eq!(
        next(&mut watcher, "the hand-made delete")
            .await
            .expect("watch"),
        None
    );
}

/// A value that is not JSON is an error naming its key, for `get` and for watchers, and the
/// watcher's tree keeps the last good value.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_values_are_errors_naming_their_key() {
    let bucket = common::unique_bucket("config");
    let config = common::config(&bucket).await;
    config.set("svc.port", json!(8080)).await.expect("set");
    let mut watcher = config.watch("svc").await.expect("watch");
    let raw = common::raw_bucket(&bucket).await;
    raw.put("svc.port", "not json".into())
        .await
        .expect("raw put");
    let error = next(&mut watcher, "the malformed value")
        .await
        .expect_err("an error");
    assert!(error.to_string().contains("svc.port"), "{error}");
    let error = config.get("svc").await.expect_err("get fails");
    assert!(error.to_string().contains("svc.port"), "{error}");
    config.set("svc.port", json!(9090)).await.expect("repair");
    eventually(PROMPT, "the repaired value is read", || async {
        config.get("svc.port").await.ok().flatten() == Some(json!(9090))
    })
    .await;
    assert_eq!(
        next(&mut watcher, "the repair").await.expect("watch"),
        Some(json!({"port": 9090}))
    );
}
