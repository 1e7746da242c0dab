//! Request counts and latency in Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Counters by (service, endpoint, HTTP status) and latency by (service, endpoint). Requests
/// that name no known service are counted under empty labels, so bad paths cannot grow the set.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
}

impl Metrics {
    /// Records one request.
    pub(crate) fn record(&self, service: &str, endpoint: &str, status: u16, elapsed: Duration) {
        let key = (service.to_string(), endpoint.to_string());
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((key.0.clone(), key.1.clone(), status))
            .or_default() += 1;
        let seconds = elapsed.as_secs_f64();
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let histogram = latency.entry(key).or_default();
        for (bound, count) in BUCKETS.iter().zip(histogram.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        histogram.sum += seconds;
        histogram.count += 1;
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP micro_gateway_requests_total HTTP requests by service, endpoint and status.\n# TYPE micro_gateway_requests_total counter\n");
        for ((service, endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "micro_gateway_requests_total{{service=\"{}\",endpoint=\"{}\",status=\"{status}\"}} {n}",
                escape(service),
                escape(endpoint)
            );
        }
        out.push_str("# HELP micro_gateway_request_duration_seconds Request latency.\n# TYPE micro_gateway_request_duration_seconds histogram\n");
        for ((service, endpoint), h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let labels = format!(
                "service=\"{}\",endpoint=\"{}\"",
                escape(service),
                escape(endpoint)
            );
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "micro_gateway_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "micro_gateway_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "micro_gateway_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "micro_gateway_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_buckets() {
        let metrics = Metrics::default();
        metrics.record("greeter", "Greeter.SayHello", 200, Duration::from_millis(3));
        metrics.record(
            "greeter",
            "Greeter.SayHello",
            200,
            Duration::from_millis(30),
        );
        let text = metrics.render();
        assert!(text.contains("micro_gateway_requests_total{service=\"greeter\",endpoint=\"Greeter.SayHello\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("le=\"0.005\"} 1"), "{text}");
        assert!(
            text.contains("_count{service=\"greeter\",endpoint=\"Greeter.SayHello\"} 2"),
            "{text}"
        );
    }
}
