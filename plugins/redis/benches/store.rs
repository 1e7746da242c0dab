//! Exact reads through `RedisStore` against raw `GET`s of the same keys on a connection of the
//! same kind, and reads answered by the `Cache` against `RedisStore` reads, all in one run.
//!
//! Needs Redis (`MICRO_REDIS_ADDRESS`, default 127.0.0.1:6379). Run: `cargo bench -p
//! micro-redis`. Prints figures and ratios; asserts nothing about time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_core::Store;
use micro_core::store::{Cache, Namespace, Query, Record};
use micro_redis::{RedisStore, key_prefix};
use redis::aio::ConnectionManager;

/// Records read, round-robin.
const KEYS: usize = 1_000;
/// Reads per round; each side runs two rounds, interleaved.
const READS: usize = 20_000;
/// Concurrent readers in the second comparison.
const IN_FLIGHT: usize = 32;
const VALUE: &[u8] = &[b'x'; 256];

type BenchError = Box<dyn std::error::Error + Send + Sync>;
type BenchResult<T> = Result<T, BenchError>;

#[tokio::main]
async fn main() -> BenchResult<()> {
    let address = std::env::var("MICRO_REDIS_ADDRESS")
        .unwrap_or_else(|_| micro_redis::DEFAULT_ADDRESS.to_string());
    let store = Arc::new(RedisStore::connect(&address).await?);
    let raw = ConnectionManager::new(redis::Client::open(address.as_str())?).await?;
    let ns = Namespace::new(format!("bench-{:08x}", fastrand::u32(..)), "t");
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("key/{i:05}")).collect());
    for key in keys.iter() {
        store.write(Record::new(key, VALUE), &ns).await?;
    }
    let prefix = key_prefix(&ns)?;
    let full: Arc<Vec<String>> = Arc::new(keys.iter().map(|k| format!("{prefix}{k}")).collect());
    let cache = Arc::new(Cache::from_arc(store.clone()).with_max_entries(KEYS));

    // Warm up every path (and fill the cache), then interleave rounds.
    raw_round(&raw, &full, KEYS, 1).await?;
    store_round(store.clone(), &keys, &ns, KEYS, 1).await?;
    store_round(cache.clone(), &keys, &ns, KEYS, 1).await?;
    let filled = cache.stats();

    for in_flight in [1, IN_FLIGHT] {
        let (mut raw_time, mut store_time, mut cache_time) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..2 {
            raw_time += raw_round(&raw, &full, READS, in_flight).await?;
            store_time += store_round(store.clone(), &keys, &ns, READS, in_flight).await?;
            cache_time += store_round(cache.clone(), &keys, &ns, READS, in_flight).await?;
        }
        let rate = |time: Duration| (2 * READS) as f64 / time.as_secs_f64();
        let (raw_rate, store_rate, cache_rate) =
            (rate(raw_time), rate(store_time), rate(cache_time));
        println!(
            "exact reads of {KEYS} records of {} bytes, {READS} x 2 per side, {in_flight} in flight:",
            VALUE.len()
        );
        println!("  raw redis GET            {raw_rate:>12.0} reads/s");
        println!("  RedisStore::read         {store_rate:>12.0} reads/s");
        println!("  Cache hits over it       {cache_rate:>12.0} reads/s");
        println!("  RedisStore / raw GET     {:>12.2}", store_rate / raw_rate);
        println!(
            "  Cache hit / RedisStore   {:>12.1}x",
            cache_rate / store_rate
        );
    }
    let stats = cache.stats();
    println!(
        "cache after the runs: {} hits, {} misses ({} while filling), {} evictions",
        stats.hits, stats.misses, filled.misses, stats.evictions
    );

    let mut conn = raw.clone();
    let _: i64 = redis::cmd("DEL")
        .arg(full.as_slice())
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// `count` raw `GET`s of `full` keys round-robin, from `in_flight` tasks; the time it took.
async fn raw_round(
    raw: &ConnectionManager,
    full: &Arc<Vec<String>>,
    count: usize,
    in_flight: usize,
) -> BenchResult<Duration> {
    let (raw, full) = (raw.clone(), full.clone());
    fan_out(count, in_flight, move |i| {
        let (mut raw, full) = (raw.clone(), full.clone());
        async move {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&full[i % full.len()])
                .query_async(&mut raw)
                .await?;
            value.ok_or("a key is missing")?;
            Ok(())
        }
    })
    .await
}

/// `count` exact reads through `store` of `keys` round-robin, from `in_flight` tasks.
async fn store_round(
    store: Arc<dyn Store>,
    keys: &Arc<Vec<String>>,
    ns: &Namespace,
    count: usize,
    in_flight: usize,
) -> BenchResult<Duration> {
    let (keys, query) = (
        keys.clone(),
        Arc::new(Query::default().in_namespace(ns.clone())),
    );
    fan_out(count, in_flight, move |i| {
        let (store, keys, query) = (store.clone(), keys.clone(), query.clone());
        async move {
            let found = store.read(&keys[i % keys.len()], &query).await?;
            if found.len() != 1 {
                return Err("a record is missing".into());
            }
            Ok(())
        }
    })
    .await
}

/// Runs `read(i)` for `i` in `0..count`, from `in_flight` tasks each awaiting its own; the time
/// it took.
async fn fan_out<F, Fut>(count: usize, in_flight: usize, read: F) -> BenchResult<Duration>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = BenchResult<()>> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|task| {
            let read = read.clone();
            tokio::spawn(async move {
                for i in (task..count).step_by(in_flight) {
                    read(i).await?;
                }
                Ok::<(), BenchError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}
