//! The [`Cache`] over the Redis store under a skewed (Zipf-like) workload: its hits, misses,
//! evictions and entries must match both the reads that reached Redis (counted by a store
//! between the cache and Redis) and a plain model of LRU and LFU kept by the test. And under
//! concurrent readers and writers it must end holding what Redis holds.

use crate::common;

use std::sync::Arc;

use common::{Counting, Tracked, address, store, tracked};
use micro_core::Store;
use micro_core::conformance::unique;
use micro_core::store::{Cache, Eviction, Namespace, Query, Record};
use micro_redis::RedisStore;

const KEYS: usize = 200;
const OPERATIONS: usize = 3_000;
const CAPACITY: usize = 20;
/// One operation in this many is a write through the cache.
const WRITE_EVERY: u32 = 20;

/// Draws key indices with probability proportional to 1 / (rank + 1)^1.1.
struct Zipf {
    cumulative: Vec<f64>,
    rng: fastrand::Rng,
}

impl Zipf {
    fn new(n: usize, seed: u64) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|i| {
                total += 1.0 / ((i + 1) as f64).powf(1.1);
                total
            })
            .collect();
        Zipf {
            cumulative,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    fn next(&mut self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = self.rng.f64() * total;
        self.cumulative
            .partition_point(|&c| c < x)
            .min(self.cumulative.len() - 1)
    }
}

/// The cache's documented policy, written the obvious way: a list of (key, uses, last use),
/// evicting the least recent (LRU) or the fewest uses then least recent (LFU).
struct Model {
    eviction: Eviction,
    capacity: usize,
    entries: Vec<(usize, u64, u64)>,
    clock: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl Model {
    fn new(eviction: Eviction, capacity: usize) -> Self {
        Model {
            eviction,
            capacity,
            entries: Vec::new(),
            clock: 0,
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    fn read(&mut self, key: usize) {
        self.clock += 1;
        match self.entries.iter_mut().find(|e| e.0 == key) {
            Some(entry) => {
                self.hits += 1;
                entry.1 += 1;
                entry.2 = self.clock;
            }
            None => {
                self.misses += 1;
                self.insert(key, 1);
            }
        }
    }

    fn write(&mut self, key: usize) {
        let uses = match self.entries.iter().position(|e| e.0 == key) {
            Some(at) => self.entries.remove(at).1,
            None => 0,
        };
        self.insert(key, uses + 1);
    }

    fn insert(&mut self, key: usize, uses: u64) {
        while self.entries.len() >= self.capacity {
            let victim = (0..self.entries.len())
                .min_by_key(|&i| {
                    let (_, uses, last) = self.entries[i];
                    match self.eviction {
                        Eviction::Lru => (0, last),
                        Eviction::Lfu => (uses, last),
                    }
                })
                .expect("not empty");
            self.entries.remove(victim);
            self.evictions += 1;
        }
        self.clock += 1;
        self.entries.push((key, uses, self.clock));
    }
}

type Stack = Cache<Counting<Tracked<RedisStore>>>;

/// A cache over a counting store over Redis, with `KEYS` records written straight to Redis.
async fn stack(eviction: Eviction, ns: &Namespace, jitter: bool) -> Stack {
    let mut inner = Counting::new(tracked(store().await, &address()));
    if jitter {
        inner = inner.with_jitter();
    }
    for i in 0..KEYS {
        inner
            .write(Record::new(format!("k{i:03}"), format!("v{i}")), ns)
            .await
            .expect("seed write");
    }
    Cache::new(inner)
        .with_name(format!("zipf-{eviction:?}"))
        .with_eviction(eviction)
        .with_max_entries(CAPACITY)
}

async fn skewed_workload(eviction: Eviction) {
    let ns = Namespace::new(unique("redis-cache"), "t");
    let cache = stack(eviction, &ns, false).await;
    let exact = Query::default().in_namespace(ns.clone());
    let mut model = Model::new(eviction, CAPACITY);
    let mut zipf = Zipf::new(KEYS, 14);
    let mut choice = fastrand::Rng::with_seed(3);
    let mut reads = 0u64;
    for op in 0..OPERATIONS {
        let i = zipf.next();
        let key = format!("k{i:03}");
        if choice.u32(..WRITE_EVERY) == 0 {
            let value = format!("v{i}-{op}");
            cache
                .write(Record::new(&key, value), &ns)
                .await
                .expect("write");
            model.write(i);
        } else {
            let got = cache.read(&key, &exact).await.expect("read");
            assert_eq!(got[0].key, key);
            model.read(i);
            reads += 1;
        }
    }

    let stats = cache.stats();
    let reached_redis = cache.inner().reads() as u64;
    println!(
        "{eviction:?}: {reads} reads, hit ratio {:.3}, {} evictions; model: {} hits, {} evictions",
        stats.hit_ratio(),
        stats.evictions,
        model.hits,
        model.evictions
    );
    assert_eq!(stats.hits + stats.misses, reads, "every read counted once");
    assert_eq!(
        stats.misses, reached_redis,
        "misses are the reads that reached Redis"
    );
    assert_eq!(
        (stats.hits, stats.misses),
        (model.hits, model.misses),
        "hits and misses as the model of {eviction:?} predicts"
    );
    assert_eq!(
        stats.evictions, model.evictions,
        "evictions as the model predicts"
    );
    assert_eq!(stats.entries, CAPACITY as u64, "full");
    assert_eq!(stats.expirations, 0);
    assert!(
        stats.hit_ratio() > 0.3,
        "a skewed workload hits a cache of a tenth of the keys: {stats:?}"
    );
    let text = cache.render_prometheus();
    let line = format!(
        "micro_cache_hits_total{{cache=\"zipf-{eviction:?}\"}} {}",
        stats.hits
    );
    assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");

    // What the cache answers is what Redis holds.
    for i in 0..KEYS {
        let key = format!("k{i:03}");
        let cached = cache.read(&key, &exact).await.expect("read");
        let direct = cache.inner().inner.read(&key, &exact).await.expect("read");
        assert_eq!(cached[0].value, direct[0].value, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lru_under_a_skewed_workload_matches_the_model_and_redis() {
    skewed_workload(Eviction::Lru).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lfu_under_a_skewed_workload_matches_the_model_and_redis() {
    skewed_workload(Eviction::Lfu).await;
}

/// Rounds of eight tasks reading and writing five hot keys at once (reads yielding between
/// Redis's answer and the fill, so writes overtake them): after each round every key read
/// through the cache equals Redis's value (no stale fill survived a write), and the counts add
/// up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_and_writers_leave_no_stale_entry() {
    const HOT: usize = 5;
    let ns = Namespace::new(unique("redis-cache-race"), "t");
    let cache = Arc::new(stack(Eviction::Lru, &ns, true).await);
    let exact = Query::default().in_namespace(ns.clone());
    let mut reads = 0;
    for round in 0..30u64 {
        let tasks: Vec<_> = (0..8u64)
            .map(|task| {
                let (cache, ns, exact) = (cache.clone(), ns.clone(), exact.clone());
                tokio::spawn(async move {
                    let mut rng = fastrand::Rng::with_seed(round * 100 + task);
                    let mut reads = 0u64;
                    for op in 0..40 {
                        let key = format!("k{:03}", rng.usize(..HOT));
                        if rng.u32(..3) == 0 {
                            let value = format!("r{round}-t{task}-{op}");
                            cache
                                .write(Record::new(&key, value), &ns)
                                .await
                                .expect("write");
                        } else {
                            cache.read(&key, &exact).await.expect("read");
                            reads += 1;
                        }
                    }
                    reads
                })
            })
            .collect();
        for task in tasks {
            reads += task.await.expect("task");
        }
        for i in 0..HOT {
            let key = format!("k{i:03}");
            let direct = cache.inner().inner.read(&key, &exact).await.expect("read");
            let cached = cache.read(&key, &exact).await.expect("read");
            reads += 1;
            assert_eq!(
                cached[0].value, direct[0].value,
                "round {round}, {key}: the cache holds Redis's value"
            );
        }
    }
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, reads);
    assert_eq!(stats.misses, cache.inner().reads() as u64);
}
