//! The conformance suite every [`Store`] implementation must pass; run it with
//! [`store_conformance!`](crate::store_conformance).

use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::conformance::{PROMPT, eventually, unique};
use crate::store::{Namespace, Query, Record, Store};

/// Generates one `#[tokio::test]` per conformance case; `$make` is an async expression giving an
/// `Arc<dyn Store>`.
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        mod store_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::store::conformance as suite;
            #[tokio::test(flavor = "multi_thread")]
            async fn write_read_delete() {
                suite::write_read_delete($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn ttl_expiry() {
                suite::ttl_expiry($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn prefix_suffix_limit_offset() {
                suite::prefix_suffix_limit_offset($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn namespaces_are_separate() {
                suite::namespaces_are_separate($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn concurrent_writers() {
                suite::concurrent_writers($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn rejects_bad_keys() {
                suite::rejects_bad_keys($make.await).await
            }
        }
    };
}

/// The TTL the expiry case writes with. Backends with coarse TTLs (Consul sessions: 10 s) may
/// enforce expiry on read instead.
pub const SHORT_TTL: Duration = Duration::from_secs(2);

fn fresh_namespace() -> Namespace {
    Namespace::new(unique("confdb"), "t")
}

/// Write, overwrite, read back with metadata, delete, read back NotFound.
pub async fn write_read_delete(store: Arc<dyn Store>) {
    let ns = fresh_namespace();
    let exact = Query::default().in_namespace(ns.clone());
    let mut record = Record::new("user/1", &b"\x00alice\xff"[..]);
    record
        .metadata
        .insert("kind".into(), serde_json::json!("user"));
    store.write(record.clone(), &ns).await.expect("write");
    let got = store.read("user/1", &exact).await.expect("read");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, record.value, "bytes round-trip");
    assert_eq!(got[0].metadata, record.metadata, "metadata round-trip");
    assert_eq!(got[0].expiry, None, "no TTL, no expiry");

    store
        .write(Record::new("user/1", "bob"), &ns)
        .await
        .expect("overwrite");
    assert_eq!(
        store.read("user/1", &exact).await.expect("read")[0].value,
        "bob"
    );

    store.delete("user/1", &ns).await.expect("delete");
    let missing = store.read("user/1", &exact).await;
    assert!(
        matches!(missing, Err(Error::NotFound(_))),
        "read after delete: {missing:?}"
    );
    store
        .delete("user/1", &ns)
        .await
        .expect("deleting a missing key is fine");
}

/// A record with a TTL reads back with time left, then is never returned once expired.
pub async fn ttl_expiry(store: Arc<dyn Store>) {
    let ns = fresh_namespace();
    store
        .write(Record::new("session", "s").with_ttl(SHORT_TTL), &ns)
        .await
        .expect("write");
    store
        .write(Record::new("keep", "k"), &ns)
        .await
        .expect("write");
    let exact = Query::default().in_namespace(ns.clone());
    let got = store
        .read("session", &exact)
        .await
        .expect("read before expiry");
    let left = got[0]
        .expiry
        .expect("a record with a TTL reports its expiry");
    assert!(
        left <= SHORT_TTL && left > Duration::ZERO,
        "time left {left:?}"
    );
    eventually(SHORT_TTL * 3 + PROMPT, "record expires", || async {
        matches!(store.read("session", &exact).await, Err(Error::NotFound(_)))
    })
    .await;
    let all = Query::prefix().in_namespace(ns.clone());
    assert_eq!(
        store.list("", &all).await.expect("list"),
        ["keep"],
        "expired keys are not listed"
    );
    assert_eq!(
        store.read("", &all).await.expect("read prefix").len(),
        1,
        "nor read by prefix"
    );
}

/// Prefix, suffix, limit and offset, on read and list, in key order.
pub async fn prefix_suffix_limit_offset(store: Arc<dyn Store>) {
    let ns = fresh_namespace();
    for key in [
        "a/1.json", "a/2.txt", "a/3.json", "a/4.json", "b/1.json", "ab",
    ] {
        store
            .write(Record::new(key, key.to_string()), &ns)
            .await
            .expect("write");
    }
    let q = Query::prefix().in_namespace(ns.clone());
    let keys = |records: Vec<Record>| records.into_iter().map(|r| r.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.read("a/", &q).await.expect("prefix")),
        ["a/1.json", "a/2.txt", "a/3.json", "a/4.json"]
    );
    assert_eq!(
        keys(
            store
                .read("a/", &q.clone().suffix(".json"))
                .await
                .expect("suffix")
        ),
        ["a/1.json", "a/3.json", "a/4.json"]
    );
    assert_eq!(
        keys(
            store
                .read(
                    "",
                    &Query::default().in_namespace(ns.clone()).suffix(".json")
                )
                .await
                .expect("suffix only")
        ),
        ["a/1.json", "a/3.json", "a/4.json", "b/1.json"]
    );
    assert_eq!(
        keys(store.read("a/", &q.clone().page(2, 1)).await.expect("page")),
        ["a/2.txt", "a/3.json"]
    );
    assert_eq!(
        store.list("a", &q.clone().page(3, 0)).await.expect("list"),
        ["a/1.json", "a/2.txt", "a/3.json"]
    );
    assert_eq!(
        store
            .list("", &q.clone().page(0, 5))
            .await
            .expect("list offset"),
        ["b/1.json"]
    );
    assert!(
        store
            .read("zzz", &q)
            .await
            .expect("no match is empty")
            .is_empty()
    );
}

/// The same key in two databases or two tables is two records.
pub async fn namespaces_are_separate(store: Arc<dyn Store>) {
    let db = unique("confdb");
    let (t1, t2, other_db) = (
        Namespace::new(&db, "t1"),
        Namespace::new(&db, "t2"),
        Namespace::new(unique("confdb"), "t1"),
    );
    store
        .write(Record::new("k", "one"), &t1)
        .await
        .expect("write t1");
    store
        .write(Record::new("k", "two"), &t2)
        .await
        .expect("write t2");
    store
        .write(Record::new("k", "three"), &other_db)
        .await
        .expect("write other db");
    for (ns, want) in [(&t1, "one"), (&t2, "two"), (&other_db, "three")] {
        let got = store
            .read("k", &Query::default().in_namespace(ns.clone()))
            .await
            .expect("read");
        assert_eq!(got[0].value, want, "in {ns:?}");
    }
    store.delete("k", &t1).await.expect("delete");
    let deleted = store
        .read("k", &Query::default().in_namespace(t1.clone()))
        .await;
    assert!(
        matches!(deleted, Err(Error::NotFound(_))),
        "the key is gone from {t1:?}: {deleted:?}"
    );
    for (ns, want) in [(&t2, "two"), (&other_db, "three")] {
        let got = store
            .read("k", &Query::default().in_namespace(ns.clone()))
            .await
            .unwrap_or_else(|e| panic!("the delete in {t1:?} left {ns:?} alone: {e}"));
        assert_eq!(got[0].value, want, "in {ns:?} after the delete");
    }
}

/// Twenty tasks writing distinct keys at once: all there.
pub async fn concurrent_writers(store: Arc<dyn Store>) {
    let ns = fresh_namespace();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (store, ns) = (store.clone(), ns.clone());
            tokio::spawn(async move {
                store
                    .write(Record::new(format!("k{i:02}"), format!("v{i}")), &ns)
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("write");
    }
    let keys = store
        .list("", &Query::prefix().in_namespace(ns))
        .await
        .expect("list");
    assert_eq!(keys.len(), 20, "{keys:?}");
}

/// Empty keys and bad namespaces are refused.
pub async fn rejects_bad_keys(store: Arc<dyn Store>) {
    let ns = fresh_namespace();
    assert!(
        store.write(Record::new("", "v"), &ns).await.is_err(),
        "empty key refused"
    );
    assert!(
        store
            .write(Record::new("k", "v"), &Namespace::new("a/b", "t"))
            .await
            .is_err(),
        "`/` in database refused"
    );
    assert!(
        store
            .write(Record::new("k".repeat(2000), "v"), &ns)
            .await
            .is_err(),
        "2000-byte key refused"
    );
}
