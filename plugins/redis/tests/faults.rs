//! Redis-specific behaviour against real servers: bad addresses, the catalog, native TTLs, the
//! key scheme, values written behind the store's back, and surviving a dropped connection and
//! a Redis restart (a `redis-server` of the test's own).

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{PrivateRedis, address, raw, store, tracked};
use micro_core::conformance::{PROMPT, eventually, unique};
use micro_core::store::{Namespace, Query, Record};
use micro_core::{Catalog, Error, Options, Store};
use micro_redis::{RedisStore, key_prefix};
use micro_testkit::{error_naming, prompt_error};

#[tokio::test]
async fn unreachable_or_bad_addresses_are_prompt_errors_naming_them() {
    prompt_error(
        Duration::from_secs(5),
        &["127.0.0.1:1"],
        RedisStore::connect("127.0.0.1:1"),
    )
    .await;

    let text = error_naming(
        &["127.0.0.1:1/3"],
        RedisStore::connect("redis://:hunter2@127.0.0.1:1/3"),
    )
    .await;
    assert!(!text.contains("hunter2"), "never the password: {text}");

    let err = RedisStore::connect("http://:hunter2@example.com")
        .await
        .expect_err("not a redis URL");
    let text = err.to_string();
    assert!(
        text.contains("example.com") && !text.contains("hunter2"),
        "{text}"
    );
}

#[tokio::test]
async fn the_catalog_builds_it_at_the_store_address() {
    let mut catalog = Catalog::new();
    micro_redis::install(&mut catalog);
    assert!(catalog.store_names().contains(&"redis".to_string()));
    let options = Options::builder().load_from(["test"]).expect("options");
    let store = catalog
        .store_named("redis", Some(address()), &options)
        .await
        .expect("redis store from the catalog");
    assert_eq!(store.name(), "redis");
    let err = catalog
        .store_named("redis", Some("127.0.0.1:1".into()), &options)
        .await
        .err()
        .expect("unreachable");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ttls_are_redis_ttls() {
    let store = tracked(store().await, &address());
    let ns = Namespace::new(unique("redis-ttl"), "t");
    let ttl = Duration::from_millis(1500);
    store
        .write(Record::new("s", "v").with_ttl(ttl), &ns)
        .await
        .expect("write");
    let full = format!("{}s", key_prefix(&ns).expect("prefix"));
    let mut raw = raw(&address());
    let pttl: i64 = redis::cmd("PTTL").arg(&full).query(&mut raw).expect("PTTL");
    assert!(pttl > 0 && pttl <= 1500, "Redis holds the TTL: {pttl} ms");
    let left = store
        .read("s", &Query::default().in_namespace(ns.clone()))
        .await
        .expect("read")[0]
        .expiry
        .expect("time left");
    assert!(left > Duration::ZERO && left <= ttl, "{left:?}");

    // Overwriting without a TTL clears it.
    store
        .write(Record::new("p", "v").with_ttl(ttl), &ns)
        .await
        .expect("write");
    store
        .write(Record::new("p", "v"), &ns)
        .await
        .expect("overwrite");
    let got = store
        .read("p", &Query::default().in_namespace(ns.clone()))
        .await
        .expect("read");
    assert_eq!(got[0].expiry, None);

    // Redis itself deletes the record: gone from the keyspace, not just hidden on read.
    eventually(ttl * 3 + PROMPT, "Redis expires the key", || {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&full)
            .query(&mut raw)
            .expect("EXISTS");
        async move { exists == 0 }
    })
    .await;
    let read = store
        .read("s", &Query::default().in_namespace(ns.clone()))
        .await;
    assert!(matches!(read, Err(Error::NotFound(_))), "{read:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_with_colons_and_glob_characters_stay_apart() {
    let store = tracked(store().await, &address());
    let db = unique("redis-keys");
    let (plain, colon_table, colon_db) = (
        Namespace::new(&db, "b"),
        Namespace::new(&db, "b:c"),
        Namespace::new(format!("{db}:b"), "c"),
    );
    store
        .write(Record::new("c:d", "1"), &plain)
        .await
        .expect("write");
    store
        .write(Record::new("d", "2"), &colon_table)
        .await
        .expect("write");
    store
        .write(Record::new("d", "3"), &colon_db)
        .await
        .expect("write");
    let mut raw = raw(&address());
    for full in [
        format!("{db}:b:c:d"),
        format!("{db}:b%3Ac:d"),
        format!("{db}%3Ab:c:d"),
    ] {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&full)
            .query(&mut raw)
            .expect("EXISTS");
        assert_eq!(exists, 1, "the documented key {full}");
    }
    for (ns, key, want) in [
        (&plain, "c:d", "1"),
        (&colon_table, "d", "2"),
        (&colon_db, "d", "3"),
    ] {
        let got = store
            .read(key, &Query::default().in_namespace(ns.clone()))
            .await
            .expect("read");
        assert_eq!(got[0].value, want, "{key} in {ns:?}");
    }
    let all = |ns: &Namespace| Query::prefix().in_namespace(ns.clone());
    assert_eq!(store.list("", &all(&plain)).await.expect("list"), ["c:d"]);
    assert_eq!(
        store.list("", &all(&colon_table)).await.expect("list"),
        ["d"]
    );

    for key in ["a*1", "ab", "a?", "[x]", r"a\b"] {
        store
            .write(Record::new(key, key.to_string()), &plain)
            .await
            .expect("write");
    }
    let keys = |records: Vec<Record>| records.into_iter().map(|r| r.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.read("a*", &all(&plain)).await.expect("read")),
        ["a*1"]
    );
    assert_eq!(
        keys(store.read("a?", &all(&plain)).await.expect("read")),
        ["a?"]
    );
    assert_eq!(
        keys(store.read("[", &all(&plain)).await.expect("read")),
        ["[x]"]
    );
    assert_eq!(
        keys(store.read(r"a\", &all(&plain)).await.expect("read")),
        [r"a\b"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_written_behind_its_back_is_an_error_naming_the_key() {
    let store = store().await;
    let ns = Namespace::new(unique("redis-foreign"), "t");
    let full = format!("{}k", key_prefix(&ns).expect("prefix"));
    let mut raw = raw(&address());
    let _: () = redis::cmd("SET")
        .arg(&full)
        .arg("plain text")
        .query(&mut raw)
        .expect("SET");
    let read = store
        .read("k", &Query::default().in_namespace(ns.clone()))
        .await;
    let prefix_read = store
        .read("", &Query::prefix().in_namespace(ns.clone()))
        .await;
    let _: () = redis::cmd("DEL").arg(&full).query(&mut raw).expect("DEL");
    let err = read.expect_err("not a micro record");
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    let host = redis::Client::open(address().as_str())
        .expect("address")
        .get_connection_info()
        .addr
        .to_string();
    let text = err.to_string();
    assert!(
        text.contains("`k`") && text.contains(&host),
        "names key and server: {text}"
    );
    assert!(prefix_read.is_err(), "a prefix read says so too");
}

/// The store's own connection is killed on the server: the next operation succeeds on a new
/// connection, without an error.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_connection_is_replaced() {
    let store = tracked(store().await, &address());
    let ns = Namespace::new(unique("redis-kill"), "t");
    let exact = Query::default().in_namespace(ns.clone());
    store
        .write(Record::new("k", "before"), &ns)
        .await
        .expect("write");
    let mut client = store.inner.client();
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut client)
        .await
        .expect("CLIENT ID");
    let mut raw = raw(&address());
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query(&mut raw)
        .expect("CLIENT KILL");
    assert_eq!(killed, 1, "our connection was killed");

    let got = store
        .read("k", &exact)
        .await
        .expect("the first read after the kill succeeds");
    assert_eq!(got[0].value, "before");
    store
        .write(Record::new("k", "after"), &ns)
        .await
        .expect("write after the kill");
    let new_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut client)
        .await
        .expect("CLIENT ID");
    assert_ne!(new_id, id, "a new connection");
}

/// Redis killed and started again on the same port: a clear error naming the address while it
/// is away, and the next operations succeed once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_is_survived() {
    let mut server = PrivateRedis::start();
    let store = Arc::new(RedisStore::connect(&server.address).await.expect("connect"));
    let ns = Namespace::default();
    let exact = Query::default();
    store
        .write(Record::new("k", "v"), &ns)
        .await
        .expect("write");

    server.kill();
    for attempt in 0..3 {
        let started = Instant::now();
        let err = store.read("k", &exact).await.expect_err("redis is down");
        let text = err.to_string();
        assert!(
            text.contains(&format!("127.0.0.1:{}", server.port)) && text.contains("cannot reach"),
            "attempt {attempt}: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "prompt: {:?}",
            started.elapsed()
        );
        let err = store
            .write(Record::new("k", "v"), &ns)
            .await
            .expect_err("redis is down");
        assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    }

    server.restart(); // empty: no persistence
    let read = store.read("k", &exact).await;
    assert!(
        matches!(read, Err(Error::NotFound(_))),
        "the first operation succeeds: {read:?}"
    );
    store
        .write(Record::new("k", "again"), &ns)
        .await
        .expect("write after the restart");
    let got = store
        .read("k", &exact)
        .await
        .expect("read after the restart");
    assert_eq!(got[0].value, "again");
    let listed = store.list("", &Query::prefix()).await.expect("list");
    assert_eq!(listed, ["k"]);
}
