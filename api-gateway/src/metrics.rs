//! Request counts and latency in Prometheus text format; streamed calls are also counted when
//! they end, by gRPC code, with the messages they carried; requests in flight. The page ends
//! with the process's core metrics (`micro_core::metrics::render`): the gateway's calls to each
//! node (`micro_client_*`: upstream latency by node, ejections, retries, fallbacks).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro_core::grpc::code_name;
use micro_core::metrics::escape_label as escape;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One endpoint's counters: requests by HTTP status, and a latency histogram.
#[derive(Debug, Default, Clone)]
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
    services: Mutex<HashMap<String, HashMap<String, Arc<EndpointStats>>>>,
    streams: Mutex<HashMap<(String, String), Streams>>,
    /// Requests being answered (see [`Metrics::in_flight`]).
    in_flight: AtomicI64,
}

/// One endpoint's counters, shared by the table and whoever records its requests.
#[derive(Debug, Default)]
pub(crate) struct EndpointStats(Mutex<Endpoint>);

impl EndpointStats {
    /// Records one request.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let mut stats = self.0.lock().unwrap_or_else(|p| p.into_inner());
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

    fn snapshot(&self) -> Endpoint {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One request in flight: counted from [`Metrics::in_flight`] until dropped.
pub(crate) struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint's streamed calls: how they ended (by gRPC code) and the messages they carried.
#[derive(Default)]
struct Streams {
    by_code: Vec<(tonic::Code, u64)>,
    messages_in: u64,
    messages_out: u64,
}

impl Metrics {
    /// Counts a request as in flight until the returned guard is dropped.
    pub(crate) fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Records one request.
    pub(crate) fn record(&self, service: &str, endpoint: &str, status: u16, elapsed: Duration) {
        self.endpoint(service, endpoint).record(status, elapsed);
    }

    /// The counters of `endpoint` of `service`, to record its requests without looking it up
    /// by name each time.
    pub(crate) fn endpoint(&self, service: &str, endpoint: &str) -> Arc<EndpointStats> {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let endpoints = match services.get_mut(service) {
            Some(endpoints) => endpoints,
            None => services.entry(service.to_string()).or_default(),
        };
        match endpoints.get(endpoint) {
            Some(stats) => stats.clone(),
            None => endpoints.entry(endpoint.to_string()).or_default().clone(),
        }
    }

    /// Starts counting a streamed call of `endpoint`; it is recorded when the returned
    /// [`StreamRecord`] is finished or dropped (dropped unfinished: the client went away,
    /// counted as `CANCELLED`).
    pub(crate) fn stream(self: &Arc<Self>, service: &str, endpoint: &str) -> StreamRecord {
        StreamRecord {
            metrics: self.clone(),
            service: service.to_string(),
            endpoint: endpoint.to_string(),
            started: Instant::now(),
            messages_in: 0,
            messages_out: 0,
            code: None,
        }
    }

    fn record_stream(&self, record: &StreamRecord, code: tonic::Code) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let stats = streams
            .entry((record.service.clone(), record.endpoint.clone()))
            .or_default();
        match stats.by_code.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => stats.by_code.push((code, 1)),
        }
        stats.messages_in += record.messages_in;
        stats.messages_out += record.messages_out;
    }

    /// The Prometheus text exposition, sorted by labels.
    pub(crate) fn render(&self) -> String {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<(&String, &String, Endpoint)> = services
            .iter()
            .flat_map(|(s, eps)| eps.iter().map(move |(e, stats)| (s, e, stats.snapshot())))
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
        drop(services);
        self.render_streams(&mut out);
        let _ = writeln!(
            out,
            "# HELP micro_gateway_requests_in_flight HTTP requests being answered.\n# TYPE micro_gateway_requests_in_flight gauge\nmicro_gateway_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out.push_str(&micro_core::metrics::render());
        out
    }

    fn render_streams(&self, out: &mut String) {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<(&(String, String), &Streams)> = streams.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        out.push_str("# HELP micro_gateway_streams_total Streamed calls (NDJSON, SSE, WebSocket) by service, endpoint and the gRPC code they ended with.\n# TYPE micro_gateway_streams_total counter\n");
        for ((service, endpoint), stats) in &rows {
            let mut by_code = stats.by_code.clone();
            by_code.sort_unstable_by_key(|(code, _)| *code as i32);
            for (code, n) in by_code {
                let _ = writeln!(
                    out,
                    "micro_gateway_streams_total{{service=\"{}\",endpoint=\"{}\",code=\"{}\"}} {n}",
                    escape(service),
                    escape(endpoint),
                    code_name(code)
                );
            }
        }
        out.push_str("# HELP micro_gateway_stream_messages_total Messages carried by ended streamed calls, from the client (in) and to it (out).\n# TYPE micro_gateway_stream_messages_total counter\n");
        for ((service, endpoint), stats) in &rows {
            for (direction, n) in [("in", stats.messages_in), ("out", stats.messages_out)] {
                let _ = writeln!(
                    out,
                    "micro_gateway_stream_messages_total{{service=\"{}\",endpoint=\"{}\",direction=\"{direction}\"}} {n}",
                    escape(service),
                    escape(endpoint)
                );
            }
        }
    }
}

/// One streamed call being counted (see [`Metrics::stream`]).
pub(crate) struct StreamRecord {
    metrics: Arc<Metrics>,
    service: String,
    endpoint: String,
    started: Instant,
    messages_in: u64,
    messages_out: u64,
    code: Option<tonic::Code>,
}

impl StreamRecord {
    /// Counts `received` messages from the client and `sent` to it.
    pub(crate) fn messages(&mut self, received: u64, sent: u64) {
        self.messages_in += received;
        self.messages_out += sent;
    }

    /// Records how the stream ended (the first call counts; a drop after it records nothing).
    pub(crate) fn finish(&mut self, code: tonic::Code) {
        if self.code.is_none() {
            self.code = Some(code);
            self.metrics.record_stream(self, code);
            tracing::debug!(
                code = code_name(code),
                messages_in = self.messages_in,
                messages_out = self.messages_out,
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "stream ended"
            );
        }
    }
}

impl Drop for StreamRecord {
    fn drop(&mut self) {
        // Dropped before it ended: the client went away (the body or the socket was dropped).
        self.finish(tonic::Code::Cancelled);
    }
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
        assert!(
            text.contains("# TYPE micro_client_calls_total counter"),
            "core's metrics appended: {text}"
        );
        assert!(text.contains("status=\"400\"} 1"), "{text}");
        assert!(text.contains("le=\"0.005\"} 2"), "{text}");
        assert!(
            text.contains("_count{service=\"greeter\",endpoint=\"Greeter.SayHello\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn a_kept_handle_counts_in_the_same_row_as_its_names() {
        let (by_name, by_handle) = (Metrics::default(), Metrics::default());
        let stats = by_handle.endpoint("greeter", "Greeter.SayHello");
        for (status, millis) in [(200, 3), (200, 30), (400, 1)] {
            let elapsed = Duration::from_millis(millis);
            by_name.record("greeter", "Greeter.SayHello", status, elapsed);
            stats.record(status, elapsed);
        }
        // Found again by name: the same counters.
        by_name.record("greeter", "Greeter.SayHello", 503, Duration::from_secs(2));
        by_handle
            .endpoint("greeter", "Greeter.SayHello")
            .record(503, Duration::from_secs(2));
        assert!(Arc::ptr_eq(
            &stats,
            &by_handle.endpoint("greeter", "Greeter.SayHello")
        ));
        // The gateway's own rows (core's, appended after them, are the process's).
        let own = |text: String| {
            let end = text
                .find("# HELP micro_gateway_requests_in_flight")
                .unwrap_or(text.len());
            text[..end].to_string()
        };
        let text = own(by_handle.render());
        assert!(text.contains("status=\"503\"} 1"), "{text}");
        assert_eq!(own(by_name.render()), text);
    }

    #[test]
    fn counts_requests_in_flight_until_their_guard_drops() {
        let metrics = Arc::new(Metrics::default());
        let first = metrics.in_flight();
        let second = metrics.in_flight();
        assert!(
            metrics
                .render()
                .contains("\nmicro_gateway_requests_in_flight 2\n")
        );
        drop(first);
        drop(second);
        assert!(
            metrics
                .render()
                .contains("\nmicro_gateway_requests_in_flight 0\n")
        );
    }

    #[test]
    fn counts_streams_by_code_when_they_end() {
        let metrics = Arc::new(Metrics::default());
        let mut ok = metrics.stream("greeter", "Greeter.Chat");
        ok.messages(1, 2);
        ok.finish(tonic::Code::Ok);
        drop(ok);
        let gone = metrics.stream("greeter", "Greeter.Chat");
        let text = metrics.render();
        assert!(
            !text.contains("CANCELLED"),
            "not counted before it ends: {text}"
        );
        drop(gone);
        let text = metrics.render();
        for line in [
            "micro_gateway_streams_total{service=\"greeter\",endpoint=\"Greeter.Chat\",code=\"OK\"} 1",
            "micro_gateway_streams_total{service=\"greeter\",endpoint=\"Greeter.Chat\",code=\"CANCELLED\"} 1",
            "micro_gateway_stream_messages_total{service=\"greeter\",endpoint=\"Greeter.Chat\",direction=\"in\"} 1",
            "micro_gateway_stream_messages_total{service=\"greeter\",endpoint=\"Greeter.Chat\",direction=\"out\"} 2",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
