//! What the micro-nats tests share: the address of the NATS under test, a private server for
//! restart tests, and wrappers that delete the buckets and streams a test made when dropped.

#![allow(dead_code, unreachable_pub)]

pub mod server;

use std::sync::Arc;

use micro_testkit::Wrapped;

/// Held by the heavy tests (thousands of events through a group with a member killed, a server
/// restarted under load) for as long as they run: one at a time, as when each was a test binary
/// of its own, so that none eats into another's time budgets. The other tests run beside them.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The NATS under test: `MICRO_NATS_ADDRESS`, else the one `scripts/setup` starts.
pub fn address() -> String {
    std::env::var("MICRO_NATS_ADDRESS").unwrap_or_else(|_| micro_nats::DEFAULT_ADDRESS.into())
}

/// Deletes every JetStream stream whose name starts with `prefix` (a test's buckets are the
/// streams `KV_<bucket>`), on a thread of its own, so it works from `Drop` in any runtime. Skipped
/// while panicking: a failed test keeps its buckets for a look (their names are unique).
pub fn delete_streams(address: &str, prefix: &str) {
    if std::thread::panicking() {
        return;
    }
    let (address, prefix) = (address.to_string(), prefix.to_string());
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for clean-up");
        runtime.block_on(async move {
            use futures::StreamExt;
            let client = async_nats::connect(address.as_str())
                .await
                .expect("connect for clean-up");
            let jetstream = async_nats::jetstream::new(client);
            let names: Vec<String> = jetstream
                .stream_names()
                .filter_map(|name| async move { name.ok() })
                .filter(|name| std::future::ready(name.starts_with(&prefix)))
                .collect()
                .await;
            for name in names {
                jetstream
                    .delete_stream(&name)
                    .await
                    .unwrap_or_else(|e| panic!("delete stream {name}: {e}"));
            }
        });
    });
    cleanup.join().expect("clean-up thread");
}

/// Subscribes `client` to `subject` and returns once the server has the subscription: a
/// message to a fresh inbox, sent after the subscription on the same connection, has come back.
/// (A flush only writes to the socket; another connection's publish could still overtake it.)
pub async fn subscribe_synced(
    client: &async_nats::Client,
    subject: String,
) -> async_nats::Subscriber {
    use futures::StreamExt;
    let subscriber = client.subscribe(subject).await.expect("subscribe");
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .expect("subscribe the echo");
    client
        .publish(inbox, "".into())
        .await
        .expect("publish the echo");
    tokio::time::timeout(micro_core::conformance::PROMPT, echo.next())
        .await
        .expect("the echo within PROMPT")
        .expect("the echo");
    subscriber
}

/// The KV bucket `name` through a plain NATS client, behind the plugins' backs.
pub async fn raw_bucket(name: &str) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(address().as_str())
        .await
        .expect("connect");
    async_nats::jetstream::new(client)
        .get_key_value(name)
        .await
        .unwrap_or_else(|e| panic!("bucket {name}: {e}"))
}

/// Whether a stream named `name` exists.
pub async fn stream_exists(address: &str, name: &str) -> bool {
    let client = async_nats::connect(address).await.expect("connect");
    async_nats::jetstream::new(client)
        .get_stream(name)
        .await
        .is_ok()
}

/// A plugin value that deletes the streams starting with `prefix` when dropped.
pub type Cleaned<T> = Wrapped<T>;

/// `inner`, whose streams all start with `prefix`, deleted when it is dropped.
pub fn cleaned<T>(inner: T, prefix: impl Into<String>) -> Cleaned<T> {
    let (address, prefix) = (address(), prefix.into());
    Wrapped::new(inner).on_drop(move || delete_streams(&address, &prefix))
}

/// A bucket name no other test run uses.
pub fn unique_bucket(what: &str) -> String {
    micro_core::conformance::unique(&format!("test-{what}"))
}

/// A registry in the bucket `bucket`, deleted when dropped (a second handle on the same bucket
/// deletes it too: the first to go wins, the others find nothing).
pub async fn registry(bucket: &str) -> Arc<Cleaned<micro_nats::NatsRegistry>> {
    let registry = micro_nats::NatsRegistry::connect_with_bucket(&address(), bucket)
        .await
        .expect("nats registry (run scripts/setup)");
    Arc::new(cleaned(registry, format!("KV_{bucket}")))
}

/// A store whose buckets start with `prefix`, deleted when dropped.
pub async fn store(prefix: &str) -> Arc<Cleaned<micro_nats::NatsStore>> {
    let store = micro_nats::NatsStore::connect(&address())
        .await
        .expect("nats store (run scripts/setup)")
        .with_bucket_prefix(prefix);
    Arc::new(cleaned(store, format!("KV_{prefix}")))
}

/// A config in a bucket of its own, deleted when dropped.
pub async fn config(bucket: &str) -> Arc<Cleaned<micro_nats::NatsConfig>> {
    let config = micro_nats::NatsConfig::connect_with_bucket(&address(), bucket)
        .await
        .expect("nats config (run scripts/setup)");
    Arc::new(cleaned(config, format!("KV_{bucket}")))
}
