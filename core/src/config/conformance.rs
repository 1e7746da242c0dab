//! The conformance suite every [`Config`] implementation must pass; run it with
//! [`config_conformance!`](crate::config_conformance).

use std::sync::Arc;

use serde_json::json;

use crate::config::Config;
use crate::conformance::{PROMPT, eventually, next, unique};

/// Generates one `#[tokio::test]` per conformance case; `$make` is an async expression giving an
/// `Arc<dyn Config>`. Each case works under a path of its own.
#[macro_export]
macro_rules! config_conformance {
    ($make:expr) => {
        mod config_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::config::conformance as suite;
            #[tokio::test(flavor = "multi_thread")]
            async fn set_get_delete() {
                suite::set_get_delete($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn typed_reads() {
                suite::typed_reads($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn watch_sees_nested_set_and_delete() {
                suite::watch_sees_nested_set_and_delete($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn concurrent_writers() {
                suite::concurrent_writers($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn rejects_bad_paths() {
                suite::rejects_bad_paths($make.await).await
            }
        }
    };
}

/// Nested set creates parents, get reads any level, delete prunes emptied parents.
pub async fn set_get_delete(config: Arc<dyn Config>) {
    let root = unique("conf_basic");
    config
        .set(&format!("{root}.db.pool.max"), json!(10))
        .await
        .expect("set");
    config
        .set(&format!("{root}.db.name"), json!("orders"))
        .await
        .expect("set");
    assert_eq!(
        config
            .get(&format!("{root}.db.pool.max"))
            .await
            .expect("get"),
        Some(json!(10))
    );
    assert_eq!(
        config.get(&format!("{root}.db")).await.expect("get"),
        Some(json!({"pool": {"max": 10}, "name": "orders"}))
    );
    config
        .set(
            &format!("{root}.db.pool"),
            json!({"min": 1, "tags": ["a", "b"], "ratio": 0.5, "on": true}),
        )
        .await
        .expect("replace subtree");
    assert_eq!(
        config.get(&format!("{root}.db.pool")).await.expect("get"),
        Some(json!({"min": 1, "tags": ["a", "b"], "ratio": 0.5, "on": true}))
    );
    config
        .delete(&format!("{root}.db.pool"))
        .await
        .expect("delete");
    config
        .delete(&format!("{root}.db.name"))
        .await
        .expect("delete");
    assert_eq!(
        config.get(&root).await.expect("get"),
        None,
        "emptied parents are pruned"
    );
    config
        .delete(&format!("{root}.never"))
        .await
        .expect("deleting an absent path is fine");
}

/// `get_as` decodes, and names the path when it cannot.
pub async fn typed_reads(config: Arc<dyn Config>) {
    let root = unique("conf_typed");
    config
        .set(&format!("{root}.port"), json!(8080))
        .await
        .expect("set");
    let port: Option<u16> = config
        .get_as(&format!("{root}.port"))
        .await
        .expect("get_as");
    assert_eq!(port, Some(8080));
    let err = config
        .get_as::<bool>(&format!("{root}.port"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!("{root}.port")),
        "error names the path: {err}"
    );
    config.delete(&root).await.expect("cleanup");
}

/// A watcher on `x.db` sees a set of `x.db.pool.max` and its delete, and nothing for siblings.
pub async fn watch_sees_nested_set_and_delete(config: Arc<dyn Config>) {
    let root = unique("conf_watch");
    let mut watcher = config.watch(&format!("{root}.db")).await.expect("watch");
    config
        .set(&format!("{root}.other"), json!(1))
        .await
        .expect("set sibling");
    config
        .set(&format!("{root}.db.pool.max"), json!(10))
        .await
        .expect("set nested");
    let seen = next(&mut watcher, "nested set").await.expect("watch");
    assert_eq!(
        seen,
        Some(json!({"pool": {"max": 10}})),
        "the sibling change is not reported"
    );
    config
        .set(&format!("{root}.db.pool.max"), json!(20))
        .await
        .expect("change nested");
    assert_eq!(
        next(&mut watcher, "nested change").await.expect("watch"),
        Some(json!({"pool": {"max": 20}}))
    );
    config
        .delete(&format!("{root}.db.pool.max"))
        .await
        .expect("delete nested");
    assert_eq!(
        next(&mut watcher, "nested delete").await.expect("watch"),
        None
    );
    config.delete(&root).await.expect("cleanup");
}

/// Twenty tasks setting sibling paths at once: every value is there.
pub async fn concurrent_writers(config: Arc<dyn Config>) {
    let root = unique("conf_concurrent");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (config, path) = (config.clone(), format!("{root}.k{i}"));
            tokio::spawn(async move { config.set(&path, json!(i)).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("set");
    }
    // Backends with a local cache may apply their own writes a moment later.
    eventually(PROMPT, "all 20 writes present", || async {
        let tree = config.get(&root).await.expect("get").unwrap_or_default();
        tree.as_object().map(|o| o.len()) == Some(20)
    })
    .await;
    let tree = config.get(&root).await.expect("get").unwrap_or_default();
    for i in 0..20 {
        assert_eq!(tree[format!("k{i}")], json!(i), "k{i} in {tree}");
    }
    config.delete(&root).await.expect("cleanup");
}

/// Paths with empty segments are refused with an error naming them.
pub async fn rejects_bad_paths(config: Arc<dyn Config>) {
    for bad in ["a..b", ".a", "a."] {
        let err = config
            .set(bad, json!(1))
            .await
            .expect_err("bad path refused");
        assert!(err.to_string().contains(bad), "error names `{bad}`: {err}");
    }
}
