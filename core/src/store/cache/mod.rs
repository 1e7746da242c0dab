//! An in-memory cache in front of any [`Store`], itself a [`Store`].
//!
//! ```
//! # use micro_core::store::{Cache, Eviction, Namespace, Query, Record};
//! # use micro_core::Store;
//! # async fn run(redis: impl Store) -> micro_core::Result<()> {
//! let store = Cache::new(redis)
//!     .with_name("users")
//!     .with_eviction(Eviction::Lfu)
//!     .with_max_entries(50_000)
//!     .with_max_bytes(64 << 20)
//!     .with_ttl(std::time::Duration::from_secs(30));
//! store.write(Record::new("user/1", "alice"), &Namespace::default()).await?; // to the store, then cached
//! store.read("user/1", &Query::default()).await?;                            // a hit
//! print!("{}", store.render_prometheus());        // micro_cache_hits_total{cache="users"} 1 ...
//! # Ok(()) }
//! ```
//!
//! - **Exact reads** (no prefix, no suffix, no offset) are answered from the cache when the
//!   record is there; a miss reads the inner store and fills the cache (read-through). A key the
//!   inner store does not have is not remembered: every read of it is a miss.
//! - **Writes** go to the inner store, then the written record is cached (write-through);
//!   **deletes** go to the inner store and drop the cached record. A failed write or delete
//!   leaves the key uncached, so the next read asks the inner store.
//! - **Prefix and suffix reads, paged reads and `list`** go to the inner store every time and
//!   are not counted in the statistics: the cache holds single records, never the knowledge of
//!   which keys exist.
//! - **Expiry.** A cached record is dropped at the earliest of its own expiry (measured from
//!   before the inner store was asked, so never later than the inner store's) and the cache's
//!   TTL ([`Cache::with_ttl`]); an expired record is never returned, and a hit reports the time
//!   the record has left. The cache TTL bounds how long a change made behind the cache's back
//!   (by another process writing to the same backend) stays invisible.
//! - **Size.** At most [`Cache::with_max_entries`] records (default [`DEFAULT_MAX_ENTRIES`]) and
//!   [`Cache::with_max_bytes`] bytes (default: no byte limit), counting each record's key, value
//!   and metadata (as JSON) and its database and table names; the map's own bookkeeping is not
//!   counted. A record larger than the byte limit is not cached. Expired records are dropped
//!   first; then [`Eviction`] picks which live ones go.
//! - **Concurrency.** A read that missed fills the cache only if no write or delete of the key
//!   ran at any time during the read, and a write caches its record only if no other write or
//!   delete of the key overlapped it, so the cache never keeps a value older than the inner
//!   store's last completed write made through it.
//! - **Statistics.** [`Cache::stats`] gives hits, misses, evictions, expirations, entries and
//!   bytes; [`Cache::render_prometheus`] (or [`render_prometheus`] for several caches) renders
//!   them in the Prometheus text format for a `/metrics` endpoint.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Namespace, Query, Record, Store};
use crate::Result;

mod policy;
mod stats;
#[cfg(test)]
mod tests;

pub use policy::Eviction;
use policy::{Kind, Limits, State};
pub use stats::{CacheStats, render_prometheus};

/// How many records a cache holds when [`Cache::with_max_entries`] is not called.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// A read-through, write-through cache over the store `S`, with LRU or LFU eviction, size
/// limits, expiry and statistics; see the [module](self) documentation.
///
/// `Cache<MyStore>` wraps a store by value ([`Cache::new`]); `Cache<dyn Store>` wraps a shared
/// one ([`Cache::from_arc`]), such as the `Arc<dyn Store>` a [`Catalog`](crate::Catalog) builds.
pub struct Cache<S: ?Sized = dyn Store> {
    inner: Arc<S>,
    name: String,
    eviction: Eviction,
    max_entries: usize,
    max_bytes: usize,
    ttl: Option<Duration>,
    state: Mutex<State>,
}

impl<S: Store> Cache<S> {
    /// A cache over `inner`: LRU, [`DEFAULT_MAX_ENTRIES`] records, no byte limit, no TTL of its
    /// own, named after the inner store's plugin.
    pub fn new(inner: S) -> Self {
        Self::from_arc(Arc::new(inner))
    }
}

impl<S: Store + ?Sized> Cache<S> {
    /// A cache over a shared store, with the defaults of [`Cache::new`].
    pub fn from_arc(inner: Arc<S>) -> Self {
        Cache {
            name: inner.name().to_string(),
            inner,
            eviction: Eviction::default(),
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: usize::MAX,
            ttl: None,
            state: Mutex::new(State::default()),
        }
    }

    /// Names the cache in its metrics (`cache="<name>"`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Chooses which record goes when the cache is full.
    pub fn with_eviction(mut self, eviction: Eviction) -> Self {
        self.eviction = eviction;
        self
    }

    /// Holds at most `max` records (0: caches nothing).
    pub fn with_max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    /// Holds at most `max` bytes of keys, values, metadata and names.
    pub fn with_max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// Keeps a record at most `ttl` after caching it, even when the record itself lives longer.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The cache's name in its metrics.
    pub fn cache_name(&self) -> &str {
        &self.name
    }

    /// The store behind the cache. Writing to it directly bypasses the cache, which keeps its
    /// copy until it expires or is evicted.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// The counters now.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats()
    }

    /// The counters in the Prometheus text format, labelled `cache="<name>"`.
    pub fn render_prometheus(&self) -> String {
        render_prometheus([(self.name.as_str(), self.stats())])
    }

    /// Drops every cached record (not counted as evictions); the counters stay.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.index.clear();
        state.entries.clear();
        state.order.clear();
        state.deadlines.clear();
        state.bytes = 0;
    }

    /// Registers an operation on `key` that may fill or change the cache; dropping the ticket
    /// without [`Ticket::finish`] (an error, a cancelled call) ends it without caching.
    fn begin(&self, kind: Kind, namespace: &Namespace, key: &str) -> Ticket<'_, S> {
        let key = (namespace.clone(), key.to_string());
        let (writers_before, epoch, uses) = self.lock().begin(kind, &key);
        Ticket {
            cache: self,
            kind,
            key,
            writers_before,
            epoch,
            uses,
            started: Instant::now(),
            done: false,
        }
    }
}

impl<S: ?Sized> Cache<S> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limits(&self) -> Limits {
        Limits {
            eviction: self.eviction,
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            ttl: self.ttl,
        }
    }
}

impl<S: ?Sized> std::fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Cache")
            .field("name", &self.name)
            .field("eviction", &self.eviction)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("ttl", &self.ttl)
            .field("stats", &state.stats())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Cache<S> {
    /// The inner store's plugin name: the cache is transparent.
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
        if query.prefix || query.suffix.is_some() || query.offset != 0 {
            return self.inner.read(key, query).await;
        }
        let hit = self
            .lock()
            .lookup(&query.namespace, key, Instant::now(), self.eviction);
        if let Some(record) = hit {
            return Ok(vec![record]);
        }
        let ticket = self.begin(Kind::Read, &query.namespace, key);
        let records = self.inner.read(key, query).await?;
        if let [record] = records.as_slice() {
            ticket.finish(Some(record.clone()));
        }
        Ok(records)
    }

    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
        let ticket = self.begin(Kind::Mutate, namespace, &record.key);
        self.inner.write(record.clone(), namespace).await?;
        ticket.finish(Some(record));
        Ok(())
    }

    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
        let ticket = self.begin(Kind::Mutate, namespace, key);
        self.inner.delete(key, namespace).await?;
        ticket.finish(None);
        Ok(())
    }

    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>> {
        self.inner.list(prefix, query).await
    }
}

/// An operation in flight on one key; see [`Cache::begin`].
struct Ticket<'a, S: ?Sized> {
    cache: &'a Cache<S>,
    kind: Kind,
    key: (Namespace, String),
    writers_before: u32,
    epoch: u64,
    uses: u64,
    started: Instant,
    done: bool,
}

impl<S: ?Sized> Ticket<'_, S> {
    /// Ends the operation; `record` is what the inner store returned or accepted (`None` for a
    /// delete), cached if no conflicting operation overlapped.
    fn finish(mut self, record: Option<Record>) {
        self.done = true;
        self.end(record);
    }

    fn end(&self, record: Option<Record>) {
        let limits = self.cache.limits();
        let mut state = self.cache.lock();
        let clean = state.end(self.kind, &self.key, self.writers_before, self.epoch);
        if let (true, Some(record)) = (clean, record) {
            let (namespace, _) = &self.key;
            state.insert(
                namespace,
                record,
                self.started,
                Instant::now(),
                self.uses + 1,
                &limits,
            );
        }
    }
}

impl<S: ?Sized> Drop for Ticket<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            self.end(None);
        }
    }
}
