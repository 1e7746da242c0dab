//! Prometheus metrics as an operator scrapes them: a greeter process serving `/metrics` on
//! `--metrics-address`, called N times through the gateway and K times on a method it does not
//! have (by a generated tonic client of another package), scraped and parsed by Python's
//! `prometheus_client` (a parser no one here wrote); and the gateway's own `/metrics`, parsed the
//! same way, showing its calls to the greeter by node.

use std::time::Duration;

use micro_testkit::greeter::v2::GoodbyeRequest;
use micro_testkit::greeter::v2::greeter_client::GreeterClient;
use micro_testkit::{GatewayProcess, Process, post, python, wait_until};
use serde_json::Value;

/// SayHello calls that succeed.
const N: usize = 5;
/// Calls of a method the greeter does not have.
const K: usize = 3;
const RUN: Duration = Duration::from_secs(30);

/// One parsed sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// Scrapes `url` with `prom_scrape.py`: the content type and every sample.
fn scrape(url: &str) -> (String, Vec<Sample>) {
    let finished = python("prom_scrape.py", &[url], RUN);
    let page: Value = serde_json::from_str(finished.success()).expect("prom_scrape.py prints JSON");
    let samples = page["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().expect("a name").to_string(),
            labels: s["labels"].as_object().expect("labels").clone(),
            value: s["value"].as_f64().expect("a value"),
        })
        .collect();
    let content_type = page["content_type"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (content_type, samples)
}

/// The sum of the samples named `name` whose labels include every pair of `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}

/// The word after `marker` in `line`.
fn word_after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `{marker}` in {line:?}"))
}

/// The `/metrics` URL a process logged (`serving metrics on http://HOST:PORT/metrics`), waiting
/// for the line: `--metrics-address` asked for port 0, so only the log knows the port.
fn logged_metrics_url(process: &Process) -> String {
    let mut url = None;
    wait_until(RUN, "the greeter logs its metrics address", || {
        url = process
            .stderr()
            .lines()
            .find(|l| l.contains("serving metrics on http://"))
            .map(|l| word_after(l, "serving metrics on ").to_string());
        url.is_some()
    });
    url.unwrap_or_default()
}

#[test]
fn a_greeter_counts_calls_by_code_and_the_gateway_counts_its_calls_by_node() {
    let gateway = GatewayProcess::start(&[]);
    let mut greeter = gateway.greeter(&["--metrics-address", "127.0.0.1:0"]);
    let startup = greeter.line_containing("listening on", RUN);
    let node = word_after(&startup, " node ").to_string();
    let address = word_after(&startup, "listening on ").to_string();
    let metrics = logged_metrics_url(&greeter);

    for i in 0..N {
        let response = post(
            gateway.http,
            "/greeter/Greeter/SayHello",
            &format!(r#"{{"name":"n{i}"}}"#),
        );
        assert_eq!(response.status, 200, "{}", response.body);
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let mut client = GreeterClient::connect(format!("http://{address}"))
            .await
            .expect("connect to the greeter");
        for _ in 0..K {
            let status = client
                .say_goodbye(GoodbyeRequest::default())
                .await
                .expect_err("the greeter has no greeter.v2 service");
            assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        }
    });

    let (content_type, samples) = scrape(&metrics);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let requests = "micro_server_requests_total";
    let ok = sum(
        &samples,
        requests,
        &[("service", "greeter"), ("code", "OK")],
    );
    let unimplemented = sum(
        &samples,
        requests,
        &[("service", "greeter"), ("code", "UNIMPLEMENTED")],
    );
    assert_eq!((ok, unimplemented), (N as f64, K as f64), "{samples:#?}");
    assert_eq!(
        sum(
            &samples,
            requests,
            &[("endpoint", "/greeter.v1.Greeter/SayHello"), ("code", "OK")]
        ),
        N as f64,
        "by gRPC path"
    );
    assert_eq!(
        sum(&samples, requests, &[("endpoint", "unknown")]),
        K as f64,
        "methods it does not have, under one label"
    );
    assert_eq!(
        sum(
            &samples,
            "micro_server_request_duration_seconds_count",
            &[("service", "greeter")]
        ),
        (N + K) as f64
    );
    let in_flight: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "micro_server_requests_in_flight" && s.label("service") == "greeter")
        .collect();
    assert!(
        in_flight.len() == 1 && in_flight[0].value == 0.0,
        "no call in flight once all answered: {in_flight:?}"
    );

    // The gateway's page: its HTTP requests, and its calls to the greeter's node (core's client
    // metrics, appended).
    let (content_type, samples) = scrape(&format!("http://{}/metrics", gateway.http));
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert_eq!(
        sum(
            &samples,
            "micro_gateway_requests_total",
            &[("service", "greeter"), ("status", "200")]
        ),
        N as f64
    );
    assert_eq!(
        sum(&samples, "micro_gateway_requests_in_flight", &[]),
        1.0,
        "the scrape itself is the one request in flight"
    );
    let calls: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "micro_client_calls_total" && s.label("service") == "greeter")
        .collect();
    assert!(
        calls
            .iter()
            .all(|s| s.label("node") == node || s.label("node") == address),
        "every call names the greeter's node {node} ({address}): {calls:#?}"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|s| s.label("code") == "OK" && s.label("endpoint").ends_with("/SayHello"))
            .map(|s| s.value)
            .sum::<f64>(),
        N as f64,
        "{calls:#?}"
    );
    // Latency by node too; the gateway's reflection calls (its schema of the greeter) are
    // calls to the node as well, so count SayHello's only.
    let latency: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "micro_client_call_duration_seconds_count"
                && s.label("service") == "greeter"
                && s.label("endpoint").ends_with("/SayHello")
        })
        .collect();
    assert!(
        latency.len() == 1 && latency[0].value == N as f64,
        "{latency:#?}"
    );
}
