//! Request counts and latency in Prometheus text format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One endpoint's counters: requests by HTTP status, and a latency histogram.
#[derive(Default)]
struct Endpoint {
    by_status: Vec<(u16, u64)>,
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Counters by service, endpoint and HTTP status, and latency by service and endpoint.
/// Requests that name no known service are counted under empty labels, so bad paths cannot
/// grow the set. Keys are allocated once, on an endpoint's first request.
#[derive(Default)]
pub(crate) struct Metrics {
    services: Mutex<HashMap<String, HashMap<String, Endpoint>>>,
}

impl Metrics {
    /// Records one request.
    pub(crate) fn record(&self, service: &str, endpoint: &str, status: u16, elapsed: Duration) {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let endpoints = match services.get_mut(service) {
            Some(endpoints) => endpoints,
            None => services.entry(service.to_string()).or_default(),
        };
        let stats = match endpoints.get_mut(endpoint) {
            Some(stats) => stats,
            None => endpoints.entry(endpoint.to_string()).or_default(),
        };
        match stats.by_status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => stats.by_status.push((status, 1)),
        }
        let seconds = elapsed.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(stats.buckets.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        stats.sum += seconds;
        stats.count += 1;
    }

    /// The Prometheus text exposition, sorted by labels.
    pub(crate) fn render(&self) -> String {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<(&String, &String, &Endpoint)> = services
            .iter()
            .flat_map(|(s, eps)| eps.iter().map(move |(e, stats)| (s, e, stats)))
            .collect();
        rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut out = String::new();
        out.push_str("# HELP micro_gateway_requests_total HTTP requests by service, endpoint and status.\n# TYPE micro_gateway_requests_total counter\n");
        for (service, endpoint, stats) in &rows {
            let mut by_status = stats.by_status.clone();
            by_status.sort_unstable();
            for (status, n) in by_status {
                let _ = writeln!(
                    out,
                    "micro_gateway_requests_total{{service=\"{}\",endpoint=\"{}\",status=\"{status}\"}} {n}",
                    escape(service),
                    escape(endpoint)
                );
            }
        }
        out.push_str("# HELP micro_gateway_request_duration_seconds Request latency.\n# TYPE micro_gateway_request_duration_seconds histogram\n");
        for (service, endpoint, stats) in &rows {
            let labels = format!(
                "service=\"{}\",endpoint=\"{}\"",
                escape(service),
                escape(endpoint)
            );
            for (bound, count) in BUCKETS.iter().zip(stats.buckets.iter()) {
                let _ = writeln!(
                    out,
                    "micro_gateway_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "micro_gateway_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                stats.count
            );
            let _ = writeln!(
                out,
                "micro_gateway_request_duration_seconds_sum{{{labels}}} {}",
                stats.sum
            );
            let _ = writeln!(
                out,
                "micro_gateway_request_duration_seconds_count{{{labels}}} {}",
                stats.count
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
        metrics.record("greeter", "Greeter.SayHello", 400, Duration::from_millis(1));
        let text = metrics.render();
        assert!(text.contains("micro_gateway_requests_total{service=\"greeter\",endpoint=\"Greeter.SayHello\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("status=\"400\"} 1"), "{text}");
        assert!(text.contains("le=\"0.005\"} 2"), "{text}");
        assert!(
            text.contains("_count{service=\"greeter\",endpoint=\"Greeter.SayHello\"} 3"),
            "{text}"
        );
    }
}
