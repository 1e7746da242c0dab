//! A cache's counters ([`CacheStats`]) and their rendering in the Prometheus text format.

use std::fmt::Write as _;

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
