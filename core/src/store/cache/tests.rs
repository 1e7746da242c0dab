//! Unit tests of the cache: its bookkeeping, its statistics and the cache over a store.

use std::collections::BTreeMap;
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
