//! What is particular to the NATS store, against the real NATS (`MICRO_NATS_ADDRESS`, default
//! `nats://127.0.0.1:4222`): the bucket and key layout seen by a plain NATS client, the sweeper,
//! the longest keys, and reads that create nothing. Buckets are deleted when a test ends.

use crate::common;

use std::time::Duration;

use micro_core::conformance::{PROMPT, eventually};
use micro_core::store::{Namespace, Query, Record};
use micro_core::{Error, Store};
use micro_nats::{EXPIRES_AT_HEADER, METADATA_HEADER, NatsStore};

fn prefix() -> String {
    format!("{}-", common::unique_bucket("store"))
}

/// Database → bucket `<prefix><database>`, table and key → `<table>.<key>` escaped, the value
/// as it is, metadata and deadline in headers.
#[tokio::test(flavor = "multi_thread")]
async fn records_are_plain_values_under_escaped_keys() {
    let prefix = prefix();
    let store = common::store(&prefix).await;
    let ns = Namespace::new("orders.v1", "line items");
    let mut record = Record::new("a.b/ü", &b"\x00raw\xff"[..]).with_ttl(Duration::from_secs(60));
    record
        .metadata
        .insert("kind".into(), serde_json::json!({"n": 1}));
    store.write(record.clone(), &ns).await.expect("write");

    let bucket = store.inner.bucket_name("orders.v1");
    assert_eq!(bucket, format!("{prefix}orders_2Ev1"));
    let raw = common::raw_bucket(&bucket).await;
    let key = "line=20items.a=2Eb/=C3=BC";
    assert_eq!(
        raw.get(key).await.expect("raw get").as_deref(),
        Some(&b"\x00raw\xff"[..]),
        "the value is the record's bytes"
    );
    let message = raw
        .stream
        .get_last_raw_message_by_subject(&format!("$KV.{bucket}.{key}"))
        .await
        .expect("raw message");
    let header = |name| {
        message
            .headers
            .get_last(name)
            .map(|v| v.as_str().to_string())
    };
    assert_eq!(
        header(METADATA_HEADER).as_deref(),
        Some(r#"{"kind":{"n":1}}"#)
    );
    let deadline: u64 = header(EXPIRES_AT_HEADER)
        .expect("a deadline")
        .parse()
        .expect("milliseconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(
        deadline > now && deadline <= now + 60_000,
        "{deadline} is within the TTL of {now}"
    );

    let got = store
        .read("a.b/ü", &Query::default().in_namespace(ns.clone()))
        .await
        .expect("read back");
    assert_eq!(got[0].value, record.value);
    assert_eq!(got[0].metadata, record.metadata);
    assert_eq!(
        store
            .list("a.", &Query::prefix().in_namespace(ns))
            .await
            .expect("list"),
        ["a.b/ü"]
    );
}

/// The sweeper deletes expired records from the bucket; records without a TTL stay.
#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_deletes_expired_records() {
    let prefix = prefix();
    let store = NatsStore::connect(&common::address())
        .await
        .expect("nats store")
        .with_bucket_prefix(prefix.clone())
        .with_sweep_interval(Some(Duration::from_millis(200)));
    let store = common::cleaned(store, format!("KV_{prefix}"));
    let ns = Namespace::new("db", "t");
    store
        .write(
            Record::new("short", "s").with_ttl(Duration::from_millis(300)),
            &ns,
        )
        .await
        .expect("write");
    store
        .write(Record::new("kept", "k"), &ns)
        .await
        .expect("write");
    let raw = common::raw_bucket(&store.inner.bucket_name("db")).await;
    assert!(raw.get("t.short").await.expect("get").is_some());
    eventually(
        PROMPT,
        "the expired record is gone from the bucket",
        || async { raw.get("t.short").await.expect("get").is_none() },
    )
    .await;
    assert_eq!(
        raw.get("t.kept").await.expect("get").as_deref(),
        Some(&b"k"[..])
    );
}

/// An expired record is never read, before the sweeper ran or without one; `sweep` then deletes
/// it, and a record rewritten without a TTL is not swept.
#[tokio::test(flavor = "multi_thread")]
async fn expired_records_are_never_read_and_sweep_on_demand() {
    let prefix = prefix();
    let store = NatsStore::connect(&common::address())
        .await
        .expect("nats store")
        .with_bucket_prefix(prefix.clone())
        .with_sweep_interval(None);
    let store = common::cleaned(store, format!("KV_{prefix}"));
    let ns = Namespace::new("db", "t");
    let exact = Query::default().in_namespace(ns.clone());
    for key in ["a", "b"] {
        store
            .write(
                Record::new(key, key).with_ttl(Duration::from_millis(200)),
                &ns,
            )
            .await
            .expect("write");
    }
    eventually(PROMPT, "both expired", || async {
        matches!(store.read("a", &exact).await, Err(Error::NotFound(_)))
            && matches!(store.read("b", &exact).await, Err(Error::NotFound(_)))
    })
    .await;
    store
        .write(Record::new("b", "again"), &ns)
        .await
        .expect("rewrite b without a TTL");
    let raw = common::raw_bucket(&store.inner.bucket_name("db")).await;
    assert!(
        raw.get("t.a").await.expect("get").is_some(),
        "not swept yet"
    );
    assert_eq!(store.inner.sweep().await.expect("sweep"), 1);
    assert!(raw.get("t.a").await.expect("get").is_none(), "swept");
    assert_eq!(
        store.read("b", &exact).await.expect("b stays")[0].value,
        "again"
    );
}

/// The longest key (1 024 bytes), escaped to three times its length, is written, read and
/// listed.
#[tokio::test(flavor = "multi_thread")]
async fn the_longest_keys_fit() {
    let store = common::store(&prefix()).await;
    let ns = Namespace::new("db", "t");
    let key = ".".repeat(1024);
    store
        .write(Record::new(key.clone(), "v"), &ns)
        .await
        .expect("write");
    let got = store
        .read(&key, &Query::default().in_namespace(ns.clone()))
        .await
        .expect("read");
    assert_eq!(got[0].key, key);
    assert_eq!(
        store
            .list("", &Query::prefix().in_namespace(ns))
            .await
            .expect("list"),
        [key]
    );
}

/// Reading, listing and deleting in a database never written create no bucket.
#[tokio::test(flavor = "multi_thread")]
async fn reads_create_no_bucket() {
    let store = common::store(&prefix()).await;
    let ns = Namespace::new("never", "t");
    let missing = store
        .read("k", &Query::default().in_namespace(ns.clone()))
        .await;
    assert!(
        matches!(&missing, Err(Error::NotFound(m)) if m.contains("never/t")),
        "{missing:?}"
    );
    assert!(
        store
            .list("", &Query::prefix().in_namespace(ns.clone()))
            .await
            .expect("list")
            .is_empty()
    );
    store.delete("k", &ns).await.expect("delete");
    let stream = format!("KV_{}", store.inner.bucket_name("never"));
    assert!(
        !common::stream_exists(&common::address(), &stream).await,
        "no bucket {stream}"
    );
}
