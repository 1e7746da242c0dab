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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Namespace, Query, Record, Store};
use crate::Result;

/// How many records a cache holds when [`Cache::with_max_entries`] is not called.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// Which record a full cache evicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Eviction {
    /// The least recently used: the record read or written longest ago.
    #[default]
    Lru,
    /// The least frequently used: the record with the fewest uses since it was cached (its
    /// first caching is one use, each hit and each write through the cache one more), the least
    /// recently used among equals. A record's count starts again at one once it is evicted.
    Lfu,
}

/// A snapshot of a cache's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Exact reads answered from the cache.
    pub hits: u64,
    /// Exact reads that asked the inner store (including reads of missing keys).
    pub misses: u64,
    /// Records removed to stay within the size limits.
    pub evictions: u64,
    /// Records removed because they expired (their own expiry or the cache TTL).
    pub expirations: u64,
    /// Records in the cache now.
    pub entries: u64,
    /// Bytes counted for the records in the cache now (keys, values, metadata, names).
    pub bytes: u64,
}

impl CacheStats {
    /// Hits over exact reads, 0 before the first read.
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

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

/// Renders the counters of several caches in the Prometheus text format, one family per
/// counter (`micro_cache_hits_total`, `_misses_total`, `_evictions_total`,
/// `_expirations_total`, and the gauges `micro_cache_entries`, `micro_cache_bytes`), each
/// labelled `cache="<name>"`.
pub fn render_prometheus<'a>(caches: impl IntoIterator<Item = (&'a str, CacheStats)>) -> String {
    let caches: Vec<(&str, CacheStats)> = caches.into_iter().collect();
    type Field = fn(&CacheStats) -> u64;
    let families: [(&str, &str, &str, Field); 6] = [
        (
            "micro_cache_hits_total",
            "counter",
            "Exact reads answered from the cache.",
            |s| s.hits,
        ),
        (
            "micro_cache_misses_total",
            "counter",
            "Exact reads that asked the store behind the cache.",
            |s| s.misses,
        ),
        (
            "micro_cache_evictions_total",
            "counter",
            "Records evicted to stay within the cache's size limits.",
            |s| s.evictions,
        ),
        (
            "micro_cache_expirations_total",
            "counter",
            "Records dropped from the cache because they expired.",
            |s| s.expirations,
        ),
        (
            "micro_cache_entries",
            "gauge",
            "Records in the cache.",
            |s| s.entries,
        ),
        (
            "micro_cache_bytes",
            "gauge",
            "Bytes of keys, values, metadata and names in the cache.",
            |s| s.bytes,
        ),
    ];
    let mut out = String::new();
    for (metric, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (name, stats) in &caches {
            let _ = writeln!(
                out,
                "{metric}{{cache=\"{}\"}} {}",
                escape_label(name),
                field(stats)
            );
        }
    }
    out
}

/// A label value with `\`, `"` and newlines escaped, as the text format wants.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// What an operation on a key may do to the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A read that missed: fills the cache if nothing changed the key meanwhile.
    Read,
    /// A write or delete: drops the cached record at once, caches the written one after.
    Mutate,
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

/// The settings [`State`] needs.
#[derive(Clone, Copy, Debug)]
struct Limits {
    eviction: Eviction,
    max_entries: usize,
    max_bytes: usize,
    ttl: Option<Duration>,
}

/// One cached record.
#[derive(Debug)]
struct Entry {
    namespace: Namespace,
    /// The record, with `expiry` unset (see `expires`).
    record: Record,
    /// When the record itself expires.
    expires: Option<Instant>,
    /// When the entry must go: the earliest of `expires` and the cache TTL.
    deadline: Option<Instant>,
    /// Uses counted for LFU.
    uses: u64,
    /// Its place in [`State::order`].
    rank: (u64, u64),
    /// Bytes counted for it.
    size: usize,
}

/// Operations in flight on one key.
#[derive(Debug, Default)]
struct KeyState {
    readers: u32,
    writers: u32,
    /// Changed each time a write or delete of the key starts.
    epoch: u64,
}

/// Everything behind the cache's lock. Entries have ids; the eviction order and the deadlines
/// refer to ids, so no key is copied on a hit.
#[derive(Debug, Default)]
struct State {
    /// Namespace → key → entry id.
    index: HashMap<Namespace, HashMap<String, u64>>,
    entries: HashMap<u64, Entry>,
    /// Eviction order, first out first: (uses for LFU or 0 for LRU, last use) → id.
    order: BTreeMap<(u64, u64), u64>,
    /// (deadline, id) of entries that have one.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Keys with operations in flight.
    pending: HashMap<(Namespace, String), KeyState>,
    /// Hands out ids, use times and epochs.
    clock: u64,
    bytes: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
    expirations: u64,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
            expirations: self.expirations,
            entries: self.entries.len() as u64,
            bytes: self.bytes as u64,
        }
    }

    fn id_of(&self, namespace: &Namespace, key: &str) -> Option<u64> {
        self.index.get(namespace)?.get(key).copied()
    }

    /// The live record under `key`, its expiry set to the time it has left, counted as a hit
    /// and a use; `None` (an expired entry dropped) counted as a miss.
    fn lookup(
        &mut self,
        namespace: &Namespace,
        key: &str,
        now: Instant,
        eviction: Eviction,
    ) -> Option<Record> {
        let Some(id) = self.id_of(namespace, key) else {
            self.misses += 1;
            return None;
        };
        let expired = self
            .entries
            .get(&id)
            .is_none_or(|e| e.deadline.is_some_and(|d| d <= now));
        if expired {
            self.remove(id);
            self.expirations += 1;
            self.misses += 1;
            return None;
        }
        let tick = self.tick();
        let entry = self.entries.get_mut(&id)?;
        entry.uses += 1;
        let rank = rank(eviction, entry.uses, tick);
        let old = std::mem::replace(&mut entry.rank, rank);
        let record = Record {
            expiry: entry.expires.map(|at| at - now),
            ..entry.record.clone()
        };
        self.order.remove(&old);
        self.order.insert(rank, id);
        self.hits += 1;
        Some(record)
    }

    /// Registers an operation on `key`: (writers in flight before it, the key's epoch, the
    /// uses of the record a write replaces). A write or delete drops the cached record.
    fn begin(&mut self, kind: Kind, key: &(Namespace, String)) -> (u32, u64, u64) {
        let mut uses = 0;
        let epoch = match kind {
            Kind::Read => 0,
            Kind::Mutate => {
                if let Some(id) = self.id_of(&key.0, &key.1) {
                    uses = self.remove(id).map_or(0, |e| e.uses);
                }
                self.tick()
            }
        };
        let state = match self.pending.get_mut(key) {
            Some(state) => state,
            None => self.pending.entry(key.clone()).or_default(),
        };
        let writers = state.writers;
        match kind {
            Kind::Read => state.readers += 1,
            Kind::Mutate => {
                state.writers += 1;
                state.epoch = epoch;
            }
        }
        (writers, state.epoch, uses)
    }

    /// Ends an operation begun with `writers_before` and `epoch`; whether it may cache what it
    /// saw: no write or delete of the key was in flight when it began, and none began since.
    fn end(
        &mut self,
        kind: Kind,
        key: &(Namespace, String),
        writers_before: u32,
        epoch: u64,
    ) -> bool {
        let Some(state) = self.pending.get_mut(key) else {
            return false;
        };
        match kind {
            Kind::Read => state.readers = state.readers.saturating_sub(1),
            Kind::Mutate => state.writers = state.writers.saturating_sub(1),
        }
        let clean = writers_before == 0 && state.writers == 0 && state.epoch == epoch;
        if state.readers == 0 && state.writers == 0 {
            self.pending.remove(key);
        }
        if kind == Kind::Mutate
            && let Some(id) = self.id_of(&key.0, &key.1)
        {
            self.remove(id);
        }
        clean
    }

    /// Caches `record` (replacing what `namespace`/`record.key` held): its expiry counted from
    /// `started` (before the inner store was asked), the cache TTL from `now`. Drops expired
    /// entries, then evicts until the limits hold. A record that cannot fit is not cached.
    fn insert(
        &mut self,
        namespace: &Namespace,
        mut record: Record,
        started: Instant,
        now: Instant,
        uses: u64,
        limits: &Limits,
    ) {
        let expires = record.expiry.take().map(|ttl| started + ttl);
        let deadline = match (expires, limits.ttl.map(|ttl| now + ttl)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(id) = self.id_of(namespace, &record.key) {
            self.remove(id);
        }
        let size = size_of(namespace, &record);
        if deadline.is_some_and(|d| d <= now) || limits.max_entries == 0 || size > limits.max_bytes
        {
            return;
        }
        self.expire(now);
        while self.entries.len() >= limits.max_entries
            || self.bytes.saturating_add(size) > limits.max_bytes
        {
            let Some((_, id)) = self.order.pop_first() else {
                break;
            };
            self.remove(id);
            self.evictions += 1;
        }
        let id = self.tick();
        let rank = rank(limits.eviction, uses, id);
        self.order.insert(rank, id);
        if let Some(deadline) = deadline {
            self.deadlines.insert((deadline, id));
        }
        self.index
            .entry(namespace.clone())
            .or_default()
            .insert(record.key.clone(), id);
        self.bytes += size;
        self.entries.insert(
            id,
            Entry {
                namespace: namespace.clone(),
                record,
                expires,
                deadline,
                uses,
                rank,
                size,
            },
        );
    }

    /// Drops every entry past its deadline.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.remove(id);
            self.expirations += 1;
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.order.remove(&entry.rank);
        if let Some(deadline) = entry.deadline {
            self.deadlines.remove(&(deadline, id));
        }
        if let Some(keys) = self.index.get_mut(&entry.namespace) {
            keys.remove(&entry.record.key);
            if keys.is_empty() {
                self.index.remove(&entry.namespace);
            }
        }
        self.bytes = self.bytes.saturating_sub(entry.size);
        Some(entry)
    }
}

/// Where an entry with `uses` uses, last used at `tick`, sorts in the eviction order.
fn rank(eviction: Eviction, uses: u64, tick: u64) -> (u64, u64) {
    match eviction {
        Eviction::Lru => (0, tick),
        Eviction::Lfu => (uses, tick),
    }
}

/// The bytes counted for `record` in `namespace`.
fn size_of(namespace: &Namespace, record: &Record) -> usize {
    let metadata = if record.metadata.is_empty() {
        0
    } else {
        serde_json::to_vec(&record.metadata).map_or(0, |m| m.len())
    };
    namespace.database.len()
        + namespace.table.len()
        + record.key.len()
        + record.value.len()
        + metadata
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;
    use crate::Error;

    fn limits(eviction: Eviction, max_entries: usize) -> Limits {
        Limits {
            eviction,
            max_entries,
            max_bytes: usize::MAX,
            ttl: None,
        }
    }

    fn ns() -> Namespace {
        Namespace::default()
    }

    /// Caches `key` as a fresh fill would.
    fn fill(state: &mut State, key: &str, now: Instant, limits: &Limits) {
        state.insert(
            &ns(),
            Record::new(key, key.to_string()),
            now,
            now,
            1,
            limits,
        );
    }

    fn cached(state: &State) -> Vec<String> {
        let mut keys: Vec<String> = state
            .entries
            .values()
            .map(|e| e.record.key.clone())
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let (mut state, now, limits) = (State::default(), Instant::now(), limits(Eviction::Lru, 3));
        for key in ["a", "b", "c"] {
            fill(&mut state, key, now, &limits);
        }
        assert!(state.lookup(&ns(), "a", now, Eviction::Lru).is_some());
        fill(&mut state, "d", now, &limits);
        assert_eq!(cached(&state), ["a", "c", "d"], "b was the least recent");
        assert!(state.lookup(&ns(), "c", now, Eviction::Lru).is_some());
        fill(&mut state, "e", now, &limits);
        assert_eq!(
            cached(&state),
            ["c", "d", "e"],
            "then a was the least recent"
        );
        assert_eq!(state.stats().evictions, 2);
        assert_eq!((state.stats().hits, state.stats().misses), (2, 0));
    }

    #[test]
    fn lfu_evicts_the_least_frequently_used_then_the_least_recent() {
        let (mut state, now, limits) = (State::default(), Instant::now(), limits(Eviction::Lfu, 3));
        for key in ["a", "b", "c"] {
            fill(&mut state, key, now, &limits);
        }
        for key in ["a", "a", "b", "c"] {
            assert!(state.lookup(&ns(), key, now, Eviction::Lfu).is_some());
        }
        // uses: a 3, b 2, c 2 (c used last): b goes.
        fill(&mut state, "d", now, &limits);
        assert_eq!(cached(&state), ["a", "c", "d"]);
        // d has 1 use, the fewest, though the most recent.
        fill(&mut state, "e", now, &limits);
        assert_eq!(cached(&state), ["a", "c", "e"]);
        assert_eq!(state.stats().evictions, 2);
    }

    #[test]
    fn byte_limit_evicts_and_refuses_what_cannot_fit() {
        let now = Instant::now();
        let limits = Limits {
            max_bytes: 40,
            ..limits(Eviction::Lru, 100)
        };
        let mut state = State::default();
        // "micro" + "micro" + key 1 + value 9 = 20 bytes each.
        for key in ["a", "b", "c"] {
            state.insert(&ns(), Record::new(key, "123456789"), now, now, 1, &limits);
        }
        assert_eq!(cached(&state), ["b", "c"]);
        assert_eq!((state.bytes, state.evictions), (40, 1));
        state.insert(
            &ns(),
            Record::new("big", vec![0u8; 64]),
            now,
            now,
            1,
            &limits,
        );
        assert_eq!(
            cached(&state),
            ["b", "c"],
            "a record over the limit is not cached"
        );
        assert_eq!(state.evictions, 1, "and evicts nothing");
    }

    #[test]
    fn never_returns_an_expired_record() {
        let now = Instant::now();
        let mut state = State::default();
        let with_ttl = Limits {
            ttl: Some(Duration::from_secs(10)),
            ..limits(Eviction::Lru, 10)
        };
        let record = Record::new("short", "s").with_ttl(Duration::from_secs(2));
        state.insert(&ns(), record, now, now, 1, &with_ttl);
        fill(&mut state, "long", now, &with_ttl);

        let later = now + Duration::from_secs(1);
        let hit = state.lookup(&ns(), "short", later, Eviction::Lru);
        assert_eq!(
            hit.and_then(|r| r.expiry),
            Some(Duration::from_secs(1)),
            "time left"
        );
        let hit = state.lookup(&ns(), "long", later, Eviction::Lru);
        assert_eq!(
            hit.map(|r| r.expiry),
            Some(None),
            "the cache TTL is not the record's"
        );

        let past_record = now + Duration::from_secs(2);
        assert_eq!(
            state.lookup(&ns(), "short", past_record, Eviction::Lru),
            None
        );
        assert!(
            state
                .lookup(&ns(), "long", past_record, Eviction::Lru)
                .is_some()
        );
        let past_cache_ttl = now + Duration::from_secs(10);
        assert_eq!(
            state.lookup(&ns(), "long", past_cache_ttl, Eviction::Lru),
            None
        );
        let stats = state.stats();
        assert_eq!((stats.expirations, stats.entries, stats.bytes), (2, 0, 0));
        assert_eq!((stats.hits, stats.misses), (3, 2));
    }

    #[test]
    fn expired_entries_go_before_live_ones_are_evicted() {
        let now = Instant::now();
        let mut state = State::default();
        let limits = limits(Eviction::Lru, 2);
        let record = Record::new("old", "o").with_ttl(Duration::from_secs(1));
        state.insert(&ns(), record, now, now, 1, &limits);
        fill(&mut state, "live", now, &limits);
        fill(&mut state, "new", now + Duration::from_secs(5), &limits);
        assert_eq!(cached(&state), ["live", "new"]);
        assert_eq!((state.evictions, state.expirations), (0, 1));
    }

    #[test]
    fn a_fill_is_dropped_when_a_write_overlapped_the_read() {
        let mut state = State::default();
        let key = (ns(), "k".to_string());
        // A read misses; a write begins and ends while the inner read runs.
        let (w, epoch, _) = state.begin(Kind::Read, &key);
        let (ww, wepoch, _) = state.begin(Kind::Mutate, &key);
        assert!(
            state.end(Kind::Mutate, &key, ww, wepoch),
            "the write alone may cache"
        );
        assert!(!state.end(Kind::Read, &key, w, epoch), "the read may not");
        // Two overlapping writes: neither may cache.
        let (a, ea, _) = state.begin(Kind::Mutate, &key);
        let (b, eb, _) = state.begin(Kind::Mutate, &key);
        assert!(!state.end(Kind::Mutate, &key, a, ea));
        assert!(!state.end(Kind::Mutate, &key, b, eb));
        // A read that began during a write may not fill, even if it ends after.
        let (ww, wepoch, _) = state.begin(Kind::Mutate, &key);
        let (r, repoch, _) = state.begin(Kind::Read, &key);
        state.end(Kind::Mutate, &key, ww, wepoch);
        assert!(!state.end(Kind::Read, &key, r, repoch));
        assert!(state.pending.is_empty(), "nothing left in flight");
        // Alone, a read fills.
        let (r, repoch, _) = state.begin(Kind::Read, &key);
        assert!(state.end(Kind::Read, &key, r, repoch));
    }

    #[test]
    fn renders_prometheus_text() {
        let stats = CacheStats {
            hits: 3,
            misses: 1,
            evictions: 2,
            expirations: 0,
            entries: 5,
            bytes: 120,
        };
        let text = render_prometheus([("users", stats), ("a\"b\\c", CacheStats::default())]);
        for line in [
            "# TYPE micro_cache_hits_total counter",
            "micro_cache_hits_total{cache=\"users\"} 3",
            "micro_cache_misses_total{cache=\"users\"} 1",
            "micro_cache_evictions_total{cache=\"users\"} 2",
            "micro_cache_expirations_total{cache=\"users\"} 0",
            "# TYPE micro_cache_entries gauge",
            "micro_cache_entries{cache=\"users\"} 5",
            "micro_cache_bytes{cache=\"users\"} 120",
            r#"micro_cache_hits_total{cache="a\"b\\c"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert_eq!(text.matches("# HELP micro_cache_hits_total").count(), 1);
        assert_eq!(stats.hit_ratio(), 0.75);
    }

    /// A store in a map, counting reads; a read may be held at a gate after it has read.
    #[derive(Default)]
    struct MapStore {
        records: Mutex<BTreeMap<(Namespace, String), Record>>,
        reads: AtomicUsize,
        gate: Option<(Notify, Notify)>,
    }

    #[async_trait]
    impl Store for MapStore {
        fn name(&self) -> &str {
            "map"
        }

        async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let found = self
                .records
                .lock()
                .unwrap()
                .get(&(query.namespace.clone(), key.to_string()))
                .cloned();
            if let Some((reading, release)) = &self.gate {
                reading.notify_one();
                release.notified().await;
            }
            found
                .map(|r| vec![r])
                .ok_or_else(|| Error::NotFound(key.to_string()))
        }

        async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
            if record.key == "refused" {
                return Err(Error::invalid("key", "refused"));
            }
            let key = (namespace.clone(), record.key.clone());
            self.records.lock().unwrap().insert(key, record);
            Ok(())
        }

        async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
            let key = (namespace.clone(), key.to_string());
            self.records.lock().unwrap().remove(&key);
            Ok(())
        }

        async fn list(&self, _prefix: &str, _query: &Query) -> Result<Vec<String>> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn reads_through_writes_through_and_deletes() {
        let cache = Cache::new(MapStore::default()).with_name("t");
        let (ns, exact) = (ns(), Query::default());
        assert_eq!(cache.name(), "map");
        assert!(matches!(
            cache.read("k", &exact).await,
            Err(Error::NotFound(_))
        ));
        assert!(
            matches!(cache.read("k", &exact).await, Err(Error::NotFound(_))),
            "a missing key is not remembered"
        );
        cache.write(Record::new("k", "v1"), &ns).await.unwrap();
        assert_eq!(cache.read("k", &exact).await.unwrap()[0].value, "v1");
        assert_eq!(cache.inner().reads.load(Ordering::SeqCst), 2, "a hit");

        // Behind the cache's back: the cache still answers v1.
        cache
            .inner()
            .write(Record::new("k", "v2"), &ns)
            .await
            .unwrap();
        assert_eq!(cache.read("k", &exact).await.unwrap()[0].value, "v1");
        cache.delete("k", &ns).await.unwrap();
        assert!(matches!(
            cache.read("k", &exact).await,
            Err(Error::NotFound(_))
        ));

        cache
            .inner()
            .write(Record::new("j", "w"), &ns)
            .await
            .unwrap();
        assert_eq!(cache.read("j", &exact).await.unwrap()[0].value, "w");
        assert_eq!(cache.read("j", &exact).await.unwrap()[0].value, "w");
        assert!(cache.write(Record::new("refused", "x"), &ns).await.is_err());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (3, 4, 1));
        assert!(
            cache
                .render_prometheus()
                .contains("micro_cache_hits_total{cache=\"t\"} 3")
        );
        cache.clear();
        assert_eq!(cache.stats().entries, 0);
    }

    #[tokio::test]
    async fn a_write_during_a_miss_is_not_overwritten_by_the_stale_fill() {
        let inner = MapStore {
            gate: Some((Notify::new(), Notify::new())),
            ..Default::default()
        };
        let cache = Arc::new(Cache::new(inner));
        let ns = ns();
        cache
            .inner()
            .records
            .lock()
            .unwrap()
            .insert((ns.clone(), "k".into()), Record::new("k", "old"));
        let reader = tokio::spawn({
            let cache = cache.clone();
            async move { cache.read("k", &Query::default()).await }
        });
        let (reading, release) = cache.inner().gate.as_ref().unwrap();
        reading.notified().await; // the read has seen "old" and waits
        cache.write(Record::new("k", "new"), &ns).await.unwrap();
        release.notify_one();
        assert_eq!(reader.await.unwrap().unwrap()[0].value, "old");

        // The write cached "new" and the read's stale fill was dropped: a hit says "new". (A
        // wrong miss would wait at the gate: the timeout turns that into a failure.)
        let exact = Query::default();
        let next = tokio::time::timeout(Duration::from_secs(5), cache.read("k", &exact));
        let next = next.await.expect("a hit, not a read held at the gate");
        assert_eq!(next.unwrap()[0].value, "new");
        assert_eq!(cache.inner().reads.load(Ordering::SeqCst), 1);
    }
}
