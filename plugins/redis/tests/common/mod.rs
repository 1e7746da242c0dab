//! What the tests of this crate share: the address of the Redis under test, a Redis of a test's
//! own, a store wrapper that removes what a test wrote, and one that counts reads.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use micro_core::Result;
use micro_core::Store;
use micro_core::store::{Namespace, Query, Record};
use micro_redis::{RedisStore, key_prefix};
use micro_testkit::{PrivateServer, Wrapped};

/// The Redis the tests use: `MICRO_REDIS_ADDRESS`, or 127.0.0.1:6379.
pub fn address() -> String {
    std::env::var("MICRO_REDIS_ADDRESS").unwrap_or_else(|_| micro_redis::DEFAULT_ADDRESS.into())
}

/// A store on the Redis under test.
pub async fn store() -> RedisStore {
    RedisStore::connect(&address())
        .await
        .expect("redis at MICRO_REDIS_ADDRESS or 127.0.0.1:6379 (redis-server)")
}

/// A plain synchronous connection to `address`, acting behind the store's back.
pub fn raw(address: &str) -> redis::Connection {
    redis::Client::open(address)
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("raw connection to {address}: {e}"))
}

/// A store that remembers every key written through it and deletes them from Redis when
/// dropped (also when a test panics), so tests leave nothing behind on the shared Redis.
pub type Tracked<S> = Wrapped<S>;

/// `inner` on the Redis at `address`, tracked: see [`Tracked`].
pub fn tracked<S>(inner: S, address: &str) -> Tracked<S> {
    let written: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let record = written.clone();
    let address = address.to_string();
    Wrapped::new(inner)
        .on_write(move |written: &Record, namespace: &Namespace| {
            if let Ok(prefix) = key_prefix(namespace) {
                let mut keys = record.lock().unwrap_or_else(|p| p.into_inner());
                keys.insert(format!("{prefix}{}", written.key));
            }
        })
        .on_drop(move || {
            let keys = std::mem::take(&mut *written.lock().unwrap_or_else(|p| p.into_inner()));
            remove_keys(&address, &keys);
        })
}

/// Deletes `keys` from the Redis at `address`, blocking (a few keys, a few milliseconds);
/// reports rather than fails when it cannot.
fn remove_keys(address: &str, keys: &BTreeSet<String>) {
    if keys.is_empty() {
        return;
    }
    let removed = redis::Client::open(address)
        .and_then(|c| c.get_connection())
        .and_then(|mut c| {
            redis::cmd("DEL")
                .arg(keys.iter().collect::<Vec<_>>())
                .query::<i64>(&mut c)
        });
    if let Err(e) = removed {
        eprintln!(
            "could not remove {} test keys from {address}: {e}",
            keys.len()
        );
    }
}

/// A store counting the exact reads that reach it: the reads a cache in front of it missed.
/// With jitter, a read yields to other tasks a random number of times after the inner store
/// answered, widening the window in which a write can overtake it.
pub struct Counting<S> {
    pub inner: S,
    pub reads: AtomicUsize,
    jitter: bool,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Counting {
            inner,
            reads: AtomicUsize::new(0),
            jitter: false,
        }
    }

    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<S: Store> Store for Counting<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
        if !query.prefix && query.suffix.is_none() {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
        let found = self.inner.read(key, query).await;
        if self.jitter {
            for _ in 0..fastrand::usize(..8) {
                tokio::task::yield_now().await;
            }
        }
        found
    }

    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
        self.inner.write(record, namespace).await
    }

    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
        self.inner.delete(key, namespace).await
    }

    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>> {
        self.inner.list(prefix, query).await
    }
}

/// A `redis-server` of a test's own on a free port, without persistence, killed when dropped.
/// Kill and restart are [`PrivateServer`]'s.
#[derive(Debug)]
pub struct PrivateRedis {
    /// `redis://127.0.0.1:<port>`.
    pub address: String,
    server: PrivateServer,
}

impl PrivateRedis {
    /// Starts one on a free port and waits until it answers.
    pub fn start() -> PrivateRedis {
        let command = |port: u16, _: &std::path::Path| {
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"]);
            command
        };
        let server = PrivateServer::start("redis-server", Duration::from_secs(10), command, pong);
        PrivateRedis {
            address: format!("redis://127.0.0.1:{}", server.port),
            server,
        }
    }
}

/// Whether the Redis on `port` answers `PING`.
fn pong(port: u16) -> bool {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
}

impl Deref for PrivateRedis {
    type Target = PrivateServer;

    fn deref(&self) -> &PrivateServer {
        &self.server
    }
}

impl DerefMut for PrivateRedis {
    fn deref_mut(&mut self) -> &mut PrivateServer {
        &mut self.server
    }
}
