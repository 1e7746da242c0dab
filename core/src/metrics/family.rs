//! The process-wide metric families: counters, gauges and latency histograms by label values,
//! rendered in Prometheus text format (0.0.4) with the gateway's buckets and escaping.
//!
//! A series is a set of atomics behind an `Arc`: [`Family::series`] hands it out (creating it on
//! first use), and a caller that keeps the handle updates it without a lock or a lookup. Only
//! finding a series takes the family's lock.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Latency buckets in seconds: the gateway's, so both pages read alike.
pub(crate) const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// [`BUCKETS`] in nanoseconds: observations are placed by integer comparison, exact at the
/// bounds (a test checks both arrays agree).
const BUCKET_NANOS: [u64; BUCKETS.len()] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
];

/// What a series holds.
pub(crate) trait Value: Default + Send + Sync {
    /// The `# TYPE` of the family.
    const KIND: &'static str;
    /// Writes the series' sample lines; `labels` is `a="x",b="y"` (possibly empty).
    fn write(&self, out: &mut String, name: &str, labels: &str);
}

/// A monotonic count.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Value for Counter {
    const KIND: &'static str = "counter";
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let value = self.0.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{} {value}", braces(labels));
    }
}

/// A value that goes up and down (calls in flight).
#[derive(Default)]
pub(crate) struct Gauge(AtomicI64);

impl Value for Gauge {
    const KIND: &'static str = "gauge";
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let value = self.0.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{} {value}", braces(labels));
    }
}

/// A latency histogram over [`BUCKETS`]. Each observation adds to one bucket only (the first
/// whose bound it does not exceed; none above the last), so an update is three atomic adds;
/// the buckets are made cumulative when written.
#[derive(Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// In nanoseconds: an integer adds atomically (written as seconds).
    sum: AtomicU64,
}

impl Value for Histogram {
    const KIND: &'static str = "histogram";
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let comma = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (bound, count) in BUCKETS.iter().zip(self.buckets.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{comma}le=\"{bound}\"}} {cumulative}"
            );
        }
        // Read apart from the buckets, an observation under way may be in one and not yet in
        // the other: `+Inf` (and `_count`, which must equal it) never reads below the buckets.
        let count = self.count.load(Ordering::Relaxed).max(cumulative);
        let _ = writeln!(out, "{name}_bucket{{{labels}{comma}le=\"+Inf\"}} {count}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// One series of a family: its label values and its value, updated through a shared handle.
pub(crate) struct Series<V> {
    /// The label values, in the order of the family's label names.
    values: Box<[Box<str>]>,
    value: V,
}

impl Series<Counter> {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.value.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Series<Gauge> {
    /// Adds `delta`.
    pub(crate) fn add(&self, delta: i64) {
        self.value.0.fetch_add(delta, Ordering::Relaxed);
    }
}

impl Series<Histogram> {
    /// Records one observation of `elapsed`.
    pub(crate) fn observe(&self, elapsed: Duration) {
        let h = &self.value;
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKET_NANOS.iter().position(|bound| nanos <= *bound) {
            h.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        h.sum.fetch_add(nanos, Ordering::Relaxed);
        h.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// One metric family: its series by label values (in the order of `labels`).
pub(crate) struct Family<V> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    /// By the label values joined with NUL (sorting as the tuples do; a label value carries no
    /// NUL: HTTP/2 forbids it in paths and headers). Taken only to find or add a series, and
    /// to list them.
    series: RwLock<BTreeMap<Box<str>, Arc<Series<V>>>>,
}

thread_local! {
    /// The joined key of the series being found: looked up without allocating once it exists.
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl<V: Value> Family<V> {
    /// An empty family; `labels` are the label names every series carries.
    pub(crate) const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Family {
            name,
            help,
            labels,
            series: RwLock::new(BTreeMap::new()),
        }
    }

    /// The series of `values` (one per label, in order), created on first use. Keep it to
    /// update the series again without a lookup.
    pub(crate) fn series(&self, values: &[&str]) -> Arc<Series<V>> {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        KEY.with_borrow_mut(|key| {
            key.clear();
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    key.push('\0');
                }
                key.push_str(value);
            }
            // Nothing panics while these locks are held; a poisoned one still holds series.
            let found = self
                .series
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(key.as_str())
                .cloned();
            if let Some(series) = found {
                return series;
            }
            let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
            if let Some(found) = series.get(key.as_str()) {
                return found.clone();
            }
            let new = Arc::new(Series {
                values: values.iter().map(|v| Box::from(*v)).collect(),
                value: V::default(),
            });
            series.insert(key.as_str().into(), new.clone());
            new
        })
    }

    /// The Prometheus text of the family (`# HELP`, `# TYPE`, then its series sorted by labels).
    pub(crate) fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, V::KIND);
        // Listed, then written without the lock: new series are not held up by a scrape.
        let series: Vec<Arc<Series<V>>> = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for series in series {
            let labels = self
                .labels
                .iter()
                .zip(series.values.iter())
                .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
                .collect::<Vec<_>>()
                .join(",");
            series.value.write(out, self.name, &labels);
        }
    }
}

impl Family<Counter> {
    /// Adds one to the series of `values`.
    pub(crate) fn inc(&self, values: &[&str]) {
        self.series(values).inc();
    }
}

impl Family<Histogram> {
    /// Records one observation of `elapsed` in the series of `values`.
    pub(crate) fn observe(&self, values: &[&str], elapsed: Duration) {
        self.series(values).observe(elapsed);
    }
}

/// `{labels}`, or nothing for a series without labels.
fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// A label value escaped as the text format asks (backslash, quote, newline).
pub fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_series_sorted_with_cumulative_buckets_and_escaped_labels() {
        let calls: Family<Counter> = Family::new("t_calls_total", "Calls.", &["code", "path"]);
        calls.inc(&["OK", "/b"]);
        calls.inc(&["OK", "/a\"x"]);
        calls.inc(&["OK", "/b"]);
        let latency: Family<Histogram> = Family::new("t_seconds", "Latency.", &["path"]);
        latency.observe(&["/a"], Duration::from_millis(3));
        latency.observe(&["/a"], Duration::from_secs(2));
        let mut out = String::new();
        calls.render(&mut out);
        latency.render(&mut out);
        let want = "# HELP t_calls_total Calls.\n# TYPE t_calls_total counter\n\
            t_calls_total{code=\"OK\",path=\"/a\\\"x\"} 1\nt_calls_total{code=\"OK\",path=\"/b\"} 2\n";
        assert!(out.starts_with(want), "{out}");
        for line in [
            "t_seconds_bucket{path=\"/a\",le=\"0.0025\"} 0",
            "t_seconds_bucket{path=\"/a\",le=\"0.005\"} 1",
            "t_seconds_bucket{path=\"/a\",le=\"5\"} 2",
            "t_seconds_bucket{path=\"/a\",le=\"+Inf\"} 2",
            "t_seconds_count{path=\"/a\"} 2",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in {out}");
        }
    }

    #[test]
    fn a_kept_handle_and_a_lookup_by_the_same_labels_add_to_one_series() {
        let calls: Family<Counter> = Family::new("t_kept_total", "Calls.", &["path"]);
        let kept = calls.series(&["/a"]);
        kept.inc();
        calls.inc(&["/a"]);
        kept.inc();
        calls.series(&["/a"]).inc();
        let in_flight: Family<Gauge> = Family::new("t_kept_in_flight", "In flight.", &["path"]);
        let gauge = in_flight.series(&["/a"]);
        gauge.add(3);
        in_flight.series(&["/a"]).add(-1);
        let latency: Family<Histogram> = Family::new("t_kept_seconds", "Latency.", &["path"]);
        let histogram = latency.series(&["/a"]);
        histogram.observe(Duration::from_millis(2));
        latency.observe(&["/a"], Duration::from_millis(20));
        let mut out = String::new();
        calls.render(&mut out);
        in_flight.render(&mut out);
        latency.render(&mut out);
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines[..2],
            [
                "t_kept_total{path=\"/a\"} 4",
                "t_kept_in_flight{path=\"/a\"} 2"
            ]
        );
        assert!(
            lines.contains(&"t_kept_seconds_bucket{path=\"/a\",le=\"0.0025\"} 1"),
            "{out}"
        );
        assert!(
            lines.contains(&"t_kept_seconds_bucket{path=\"/a\",le=\"0.025\"} 2"),
            "{out}"
        );
        assert!(
            lines.contains(&"t_kept_seconds_count{path=\"/a\"} 2"),
            "{out}"
        );
        assert_eq!(lines.len(), 2 + BUCKETS.len() + 3, "one series each: {out}");
    }

    #[test]
    fn buckets_are_written_cumulative_and_a_value_at_a_bound_counts_in_that_bucket() {
        let latency: Family<Histogram> = Family::new("t_edges_seconds", "Latency.", &[]);
        let series = latency.series(&[]);
        for nanos in [0, 500_000, 500_001, 1_000_000, 5_000_000_000, 5_000_000_001] {
            series.observe(Duration::from_nanos(nanos));
        }
        let mut out = String::new();
        latency.render(&mut out);
        let want = "# HELP t_edges_seconds Latency.\n# TYPE t_edges_seconds histogram\n\
            t_edges_seconds_bucket{le=\"0.0005\"} 2\n\
            t_edges_seconds_bucket{le=\"0.001\"} 4\n\
            t_edges_seconds_bucket{le=\"0.0025\"} 4\n\
            t_edges_seconds_bucket{le=\"0.005\"} 4\n\
            t_edges_seconds_bucket{le=\"0.01\"} 4\n\
            t_edges_seconds_bucket{le=\"0.025\"} 4\n\
            t_edges_seconds_bucket{le=\"0.05\"} 4\n\
            t_edges_seconds_bucket{le=\"0.1\"} 4\n\
            t_edges_seconds_bucket{le=\"0.25\"} 4\n\
            t_edges_seconds_bucket{le=\"0.5\"} 4\n\
            t_edges_seconds_bucket{le=\"1\"} 4\n\
            t_edges_seconds_bucket{le=\"5\"} 5\n\
            t_edges_seconds_bucket{le=\"+Inf\"} 6\n\
            t_edges_seconds_sum 10.002000002\n\
            t_edges_seconds_count 6\n";
        assert_eq!(out, want);
    }

    #[test]
    fn the_bucket_bounds_in_nanoseconds_are_the_written_ones() {
        for (nanos, seconds) in BUCKET_NANOS.iter().zip(BUCKETS) {
            assert_eq!(*nanos as f64 / 1e9, seconds);
        }
    }
}
