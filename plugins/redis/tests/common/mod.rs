//! What the tests of this crate share: the address of the Redis under test, a Redis of a test's
//! own, a store wrapper that removes what a test wrote, and one that counts reads.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use micro_core::Result;
use micro_core::Store;
use micro_core::store::{Namespace, Query, Record};
use micro_redis::{RedisStore, key_prefix};

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
pub struct Tracked<S> {
    pub inner: S,
    address: String,
    written: Mutex<BTreeSet<String>>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, address: &str) -> Self {
        Tracked {
            inner,
            address: address.to_string(),
            written: Mutex::new(BTreeSet::new()),
        }
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        let keys = std::mem::take(&mut *self.written.lock().unwrap_or_else(|p| p.into_inner()));
        if keys.is_empty() {
            return;
        }
        // Blocking, on whatever thread drops it: a few keys, a few milliseconds.
        let removed = redis::Client::open(self.address.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| {
                redis::cmd("DEL")
                    .arg(keys.iter().collect::<Vec<_>>())
                    .query::<i64>(&mut c)
            });
        if let Err(e) = removed {
            eprintln!(
                "could not remove {} test keys from {}: {e}",
                keys.len(),
                self.address
            );
        }
    }
}

#[async_trait]
impl<S: Store> Store for Tracked<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
        self.inner.read(key, query).await
    }

    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
        if let Ok(prefix) = key_prefix(namespace) {
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            written.insert(format!("{prefix}{}", record.key));
        }
        self.inner.write(record, namespace).await
    }

    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
        self.inner.delete(key, namespace).await
    }

    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>> {
        self.inner.list(prefix, query).await
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
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    pub address: String,
    process: Option<Child>,
}

impl PrivateRedis {
    /// Starts one on a free port and waits until it answers.
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut redis = PrivateRedis {
            port,
            address: format!("redis://127.0.0.1:{port}"),
            process: None,
        };
        redis.resume();
        redis
    }

    /// Kills it (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, and waits until it answers.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        self.process = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = redis::Client::open(self.address.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(
                Instant::now() < until,
                "private redis on {} does not answer",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
