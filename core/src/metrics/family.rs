//! The process-wide metric families: counters, gauges and latency histograms by label values,
//! rendered in Prometheus text format (0.0.4) with the gateway's buckets and escaping.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets in seconds: the gateway's, so both pages read alike.
pub(crate) const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// What a series holds.
pub(crate) trait Value: Default + Send {
    /// The `# TYPE` of the family.
    const KIND: &'static str;
    /// Writes the series' sample lines; `labels` is `a="x",b="y"` (possibly empty).
    fn write(&self, out: &mut String, name: &str, labels: &str);
}

/// A monotonic count.
#[derive(Default)]
pub(crate) struct Counter(u64);

impl Value for Counter {
    const KIND: &'static str = "counter";
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), self.0);
    }
}

/// A value that goes up and down (calls in flight).
#[derive(Default)]
pub(crate) struct Gauge(i64);

impl Value for Gauge {
    const KIND: &'static str = "gauge";
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), self.0);
    }
}

/// A latency histogram over [`BUCKETS`] (cumulative when written).
#[derive(Default)]
pub(crate) struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Value for Histogram {
    const KIND: &'static str = "histogram";
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let comma = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(self.buckets.iter()) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{comma}le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{comma}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// One metric family: its series by label values (in the order of `labels`).
pub(crate) struct Family<V> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    /// By the label values joined with NUL (sorting as the tuples do; a label value carries no
    /// NUL: HTTP/2 forbids it in paths and headers), with the values themselves.
    series: Mutex<BTreeMap<Box<str>, Series<V>>>,
}

/// A series: its label values and its value.
type Series<V> = (Vec<String>, V);

thread_local! {
    /// The joined key of the series being changed: found without allocating once it exists.
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
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn with(&self, values: &[&str], change: impl FnOnce(&mut V)) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        // A panic elsewhere while holding the lock leaves counts that are still counts.
        KEY.with_borrow_mut(|key| {
            key.clear();
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    key.push('\0');
                }
                key.push_str(value);
            }
            let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
            match series.get_mut(key.as_str()) {
                Some((_, value)) => change(value),
                None => {
                    let mut value = V::default();
                    change(&mut value);
                    let labels = values.iter().map(|v| (*v).to_string()).collect();
                    series.insert(key.as_str().into(), (labels, value));
                }
            }
        });
    }

    /// The Prometheus text of the family (`# HELP`, `# TYPE`, then its series sorted by labels).
    pub(crate) fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, V::KIND);
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for (values, value) in series.values() {
            let labels = self
                .labels
                .iter()
                .zip(values)
                .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
                .collect::<Vec<_>>()
                .join(",");
            value.write(out, self.name, &labels);
        }
    }
}

impl Family<Counter> {
    /// Adds one to the series of `values`.
    pub(crate) fn inc(&self, values: &[&str]) {
        self.with(values, |c| c.0 += 1);
    }
}

impl Family<Gauge> {
    /// Adds `delta` to the series of `values`.
    pub(crate) fn add(&self, values: &[&str], delta: i64) {
        self.with(values, |g| g.0 += delta);
    }
}

impl Family<Histogram> {
    /// Records one observation of `elapsed` in the series of `values`.
    pub(crate) fn observe(&self, values: &[&str], elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        self.with(values, |h| {
            for (bound, count) in BUCKETS.iter().zip(h.buckets.iter_mut()) {
                if seconds <= *bound {
                    *count += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        });
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
}
