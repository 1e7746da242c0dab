//! A cache's bookkeeping behind its lock: the entries, their sizes and deadlines, the LRU/LFU
//! eviction order and what to evict, and the operations in flight on each key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::CacheStats;
use crate::store::{Namespace, Record};

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

/// What an operation on a key may do to the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A read that missed: fills the cache if nothing changed the key meanwhile.
    Read,
    /// A write or delete: drops the cached record at once, caches the written one after.
    Mutate,
}

/// The settings [`State`] needs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) eviction: Eviction,
    pub(super) max_entries: usize,
    pub(super) max_bytes: usize,
    pub(super) ttl: Option<Duration>,
}

/// One cached record.
#[derive(Debug)]
pub(super) struct Entry {
    namespace: Namespace,
    /// The record, with `expiry` unset (see `expires`).
    pub(super) record: Record,
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
pub(super) struct KeyState {
    readers: u32,
    writers: u32,
    /// Changed each time a write or delete of the key starts.
    epoch: u64,
}

/// Everything behind the cache's lock. Entries have ids; the eviction order and the deadlines
/// refer to ids, so no key is copied on a hit.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Namespace → key → entry id.
    pub(super) index: HashMap<Namespace, HashMap<String, u64>>,
    pub(super) entries: HashMap<u64, Entry>,
    /// Eviction order, first out first: (uses for LFU or 0 for LRU, last use) → id.
    pub(super) order: BTreeMap<(u64, u64), u64>,
    /// (deadline, id) of entries that have one.
    pub(super) deadlines: BTreeSet<(Instant, u64)>,
    /// Keys with operations in flight.
    pub(super) pending: HashMap<(Namespace, String), KeyState>,
    /// Hands out ids, use times and epochs.
    clock: u64,
    pub(super) bytes: usize,
    hits: u64,
    misses: u64,
    pub(super) evictions: u64,
    pub(super) expirations: u64,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    pub(super) fn stats(&self) -> CacheStats {
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
    pub(super) fn lookup(
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
    pub(super) fn begin(&mut self, kind: Kind, key: &(Namespace, String)) -> (u32, u64, u64) {
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
    pub(super) fn end(
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
    pub(super) fn insert(
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
