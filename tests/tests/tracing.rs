//! W3C trace context end to end, as a user with an OpenTelemetry collector sees it: the gateway,
//! `greeter-relay` and `greeter` run as processes exporting spans over OTLP/gRPC to the test's
//! receiver (`OTEL_EXPORTER_OTLP_ENDPOINT`); one HTTP call makes one trace across the three, each
//! hop the child of the one before, and the message the relay publishes on NATS carries it in
//! its `traceparent` header. A client's `traceparent` is continued by the gateway; a malformed
//! one is ignored; processes that export nothing still pass the trace on.

use std::sync::Arc;
use std::time::Duration;

use micro_core::Broker;
use micro_core::broker::{SubscribeOptions, Subscription};
use micro_testkit::Collected;
use micro_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use micro_testkit::{GatewayProcess, HttpResponse, Process, SHORT_TTL_ARGS, raw_http, wait_until};

/// Startup, registration and the first call through a cold gateway on a loaded machine.
const READY: Duration = Duration::from_secs(30);
/// Spans are batched for 100 ms (`OTEL_BSP_SCHEDULE_DELAY`); the rest is a loaded machine.
const EXPORTED: Duration = Duration::from_secs(15);

const GATEWAY: &str = "micro-gateway";
const RELAY: &str = "greeter-relay";
const GREETER: &str = "greeter";

/// The environment that makes a process export to `receiver`, in 100 ms batches.
fn otel_env(receiver: &OtlpReceiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ]
}

fn start_gateway(env: &[(&'static str, String)]) -> GatewayProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    GatewayProcess::start_with_env(&[], &env)
}

/// Example binary `name` registering with the gateway's registry, plus `extra` flags.
fn start_service(
    name: &str,
    gateway: &GatewayProcess,
    extra: &[&str],
    env: &[(&'static str, String)],
) -> Process {
    let registry = gateway.registry.to_string();
    let mut args = vec!["--registry-address", registry.as_str()];
    args.extend_from_slice(&SHORT_TTL_ARGS);
    args.extend_from_slice(extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut process = Process::start(name, &args, &env, None);
    process.line_containing("listening on", READY);
    process
}

/// `POST /{service}/Greeter/SayHello` with `x-request-id: request_id` and `extra` header lines.
fn say_hello(
    gateway: &GatewayProcess,
    service: &str,
    request_id: &str,
    extra: &str,
) -> HttpResponse {
    let body = r#"{"name":"Trace"}"#;
    let request = format!(
        "POST /{service}/Greeter/SayHello HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         x-request-id: {request_id}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(gateway.http, request.as_bytes())
}

/// Calls until `service` answers 200 through the gateway (registration reaching the gateway).
fn wait_for(gateway: &GatewayProcess, service: &str) {
    wait_until(
        READY,
        &format!("{service} answers through the gateway"),
        || say_hello(gateway, service, "warm-up", "").status == 200,
    );
}

/// A plain NATS subscriber on `topic` (not the catalog's observed broker): what any consumer
/// finds in a message's headers.
async fn subscribe(topic: &str) -> (Box<dyn Subscription>, Collected) {
    let broker: Arc<dyn Broker> = Arc::new(
        micro_nats::NatsBroker::connect("")
            .await
            .expect("NATS on 127.0.0.1:4222 (scripts/setup starts it)"),
    );
    let (handler, collected) = micro_testkit::collecting();
    let subscription = broker
        .subscribe(topic, handler, SubscribeOptions::default())
        .await
        .expect("subscribe");
    (subscription, collected)
}

/// The `handle` span of `service` for the call tagged `request_id`, once exported.
fn handle_span(receiver: &OtlpReceiver, service: &str, request_id: &str) -> ReceivedSpan {
    let find = || {
        receiver.spans().into_iter().find(|s| {
            s.service == service
                && s.name == "handle"
                && s.attributes.get("request_id").map(String::as_str) == Some(request_id)
        })
    };
    wait_until(
        EXPORTED,
        &format!("{service}'s handle span for {request_id}"),
        || find().is_some(),
    );
    find().expect("found above")
}

/// The span with id `span_id` in `trace`.
fn span<'a>(trace: &'a [ReceivedSpan], span_id: &str) -> Option<&'a ReceivedSpan> {
    trace.iter().find(|s| s.span_id == span_id)
}

/// Walks up from `from` through its parents in `trace` (all exported by `within`, the process
/// `from` was called from) to the first span named `name`; panics naming the gap otherwise.
fn ancestor<'a>(
    trace: &'a [ReceivedSpan],
    from: &ReceivedSpan,
    within: &str,
    name: &str,
) -> &'a ReceivedSpan {
    let mut parent_id = from.parent_span_id.clone();
    loop {
        let parent = span(trace, &parent_id).unwrap_or_else(|| {
            panic!(
                "{}'s `{}` span has parent {parent_id:?}, which is no exported span of its \
                 trace: {trace:#?}",
                from.service, from.name
            )
        });
        assert_eq!(parent.service, within, "{parent:#?} in {trace:#?}");
        if parent.name == name {
            return parent;
        }
        parent_id = parent.parent_span_id.clone();
    }
}

#[test]
fn one_trace_from_the_gateway_through_relay_and_greeter_and_the_message_it_publishes() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let receiver = runtime.block_on(OtlpReceiver::start());
    let env = otel_env(&receiver);
    let topic = format!("greeted.{:08x}", fastrand::u32(..));
    let (subscriber, collected) = runtime.block_on(subscribe(&topic));

    let gateway = start_gateway(&env);
    let _greeter = start_service(GREETER, &gateway, &[], &env);
    let _relay = start_service(
        RELAY,
        &gateway,
        &["--broker", "nats", "--topic", &topic],
        &env,
    );
    wait_for(&gateway, RELAY);

    let response = say_hello(&gateway, RELAY, "traced-call", "");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.body.contains("Hello Trace"), "{}", response.body);

    // The trace, found from the relay's span of this call.
    let relay_handle = handle_span(&receiver, RELAY, "traced-call");
    let trace_id = relay_handle.trace_id.clone();
    assert_eq!(trace_id.len(), 32, "{relay_handle:?}");
    // The relay's call to the greeter has an id of its own: found by the trace it continues.
    let greeter_in_trace = || {
        receiver
            .trace(&trace_id)
            .into_iter()
            .find(|s| s.service == GREETER && s.name == "handle")
    };
    wait_until(
        EXPORTED,
        "the greeter's handle span in the call's trace",
        || greeter_in_trace().is_some(),
    );
    let greeter_handle = greeter_in_trace().expect("found above");
    // Each hop's spans arrive in their own process's batches.
    wait_until(EXPORTED, "the gateway's http span of the call", || {
        receiver
            .trace(&trace_id)
            .iter()
            .any(|s| s.service == GATEWAY && s.name == "http")
    });
    let trace = receiver.trace(&trace_id);
    let http = ancestor(&trace, &relay_handle, GATEWAY, "http");
    assert_eq!(
        http.parent_span_id, "",
        "the gateway starts the trace of a call without traceparent: {http:?}"
    );
    assert_eq!(
        http.attributes.get("path").map(String::as_str),
        Some("/greeter-relay/Greeter/SayHello")
    );
    // Recorded once the call is routed, both in one record.
    assert_eq!(
        (
            http.attributes.get("service").map(String::as_str),
            http.attributes.get("endpoint").map(String::as_str)
        ),
        (Some("greeter-relay"), Some("Greeter.SayHello"))
    );
    let relay_parent = ancestor(&trace, &greeter_handle, RELAY, "handle");
    assert_eq!(
        relay_parent.span_id, relay_handle.span_id,
        "the greeter's handle span descends from the relay's handle span of the same call"
    );
    for service in [GATEWAY, RELAY, GREETER] {
        assert!(
            trace.iter().any(|s| s.service == service),
            "{service} has spans in the trace: {trace:#?}"
        );
    }

    // The message published inside the relay's handler carries the same trace (warm-up calls
    // published theirs too: the one of this call is found by its trace id).
    let traceparents = || -> Vec<String> {
        collected
            .messages()
            .iter()
            .filter_map(|m| m.header.get("traceparent").cloned())
            .collect()
    };
    wait_until(EXPORTED, "the relay's message of the call on NATS", || {
        traceparents().iter().any(|t| t.contains(&trace_id))
    });
    assert!(
        collected
            .messages()
            .iter()
            .all(|m| m.header.contains_key("traceparent")),
        "every message carries a traceparent: {:?}",
        collected.messages()
    );
    let traceparent = traceparents()
        .into_iter()
        .find(|t| t.contains(&trace_id))
        .expect("found above");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace_id, "the message's trace is the call's");
    let publisher = span(&trace, parts[2])
        .unwrap_or_else(|| panic!("{traceparent} names no exported span of {trace:#?}"));
    assert_eq!(publisher.service, RELAY, "{publisher:?}");
    assert_eq!(parts[3], "01", "sampled");

    runtime.block_on(async { subscriber.unsubscribe().await.expect("unsubscribe") });
}

#[test]
fn a_client_traceparent_is_continued_and_a_malformed_one_starts_a_new_trace() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let receiver = runtime.block_on(OtlpReceiver::start());
    let env = otel_env(&receiver);
    let gateway = start_gateway(&env);
    let _greeter = start_service(GREETER, &gateway, &[], &env);
    wait_for(&gateway, GREETER);

    // A valid traceparent: the gateway's span is its child, the greeter's in the same trace.
    let trace_id = format!("{:016x}{:016x}", fastrand::u64(1..), fastrand::u64(..));
    let parent = format!("{:016x}", fastrand::u64(1..));
    let header = format!("traceparent: 00-{trace_id}-{parent}-01\r\n");
    let response = say_hello(&gateway, GREETER, "continued", &header);
    assert_eq!(response.status, 200, "{}", response.body);
    let greeter_handle = handle_span(&receiver, GREETER, "continued");
    assert_eq!(greeter_handle.trace_id, trace_id);
    wait_until(EXPORTED, "the gateway's http span of the call", || {
        receiver
            .trace(&trace_id)
            .iter()
            .any(|s| s.service == GATEWAY && s.name == "http")
    });
    let trace = receiver.trace(&trace_id);
    let http = ancestor(&trace, &greeter_handle, GATEWAY, "http");
    assert_eq!(
        http.parent_span_id, parent,
        "the gateway's span is the child of the client's"
    );

    // A malformed traceparent (a trace id one digit short) is ignored: still 200, a new trace.
    let bad_trace = &trace_id[1..];
    let header = format!("traceparent: 00-{bad_trace}-{parent}-01\r\n");
    let response = say_hello(&gateway, GREETER, "malformed", &header);
    assert_eq!(response.status, 200, "{}", response.body);
    let greeter_handle = handle_span(&receiver, GREETER, "malformed");
    assert_eq!(greeter_handle.trace_id.len(), 32);
    assert!(
        !greeter_handle.trace_id.contains(bad_trace) && greeter_handle.trace_id != "0".repeat(32),
        "a new trace, not the malformed one: {greeter_handle:?}"
    );
    let new_trace = greeter_handle.trace_id.clone();
    wait_until(EXPORTED, "the gateway's http span of the call", || {
        receiver
            .trace(&new_trace)
            .iter()
            .any(|s| s.service == GATEWAY && s.name == "http")
    });
    let trace = receiver.trace(&new_trace);
    let http = ancestor(&trace, &greeter_handle, GATEWAY, "http");
    assert_eq!(
        http.parent_span_id, "",
        "the gateway's span is the root of the new trace"
    );
}

#[test]
fn a_stopping_service_sends_the_spans_it_still_holds() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let receiver = runtime.block_on(OtlpReceiver::start());
    // Batches every minute: a span that arrives sooner was sent by the shutdown at exit.
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_string()),
    ];
    let gateway = start_gateway(&[]);
    let mut greeter = start_service(GREETER, &gateway, &[], &env);
    wait_for(&gateway, GREETER);
    let response = say_hello(&gateway, GREETER, "last-call", "");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        receiver.spans().is_empty(),
        "nothing exported before the batch delay: {:?}",
        receiver.spans()
    );

    greeter.terminate();
    let status = greeter.wait(Duration::from_secs(20));
    assert!(status.success(), "greeter exited with {status}");
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.service == GREETER
            && s.name == "handle"
            && s.attributes.get("request_id").map(String::as_str) == Some("last-call")),
        "the last call's span was sent at exit: {spans:#?}"
    );
}

#[test]
fn without_an_exporter_the_trace_still_goes_from_hop_to_hop() {
    // The gateway and the relay export nothing (micro's propagation layer keeps their ids);
    // the greeter behind them exports: its span must be in the client's trace, the child of a
    // span of the relay's rather than of the client's, and the relay's message must carry the
    // trace on.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let receiver = runtime.block_on(OtlpReceiver::start());
    let topic = format!("greeted.{:08x}", fastrand::u32(..));
    let (subscriber, collected) = runtime.block_on(subscribe(&topic));
    let gateway = start_gateway(&[]);
    let _greeter = start_service(GREETER, &gateway, &[], &otel_env(&receiver));
    let _relay = start_service(
        RELAY,
        &gateway,
        &["--broker", "nats", "--topic", &topic],
        &[],
    );
    wait_for(&gateway, RELAY);

    let trace_id = format!("{:016x}{:016x}", fastrand::u64(1..), fastrand::u64(..));
    let parent = format!("{:016x}", fastrand::u64(1..));
    let header = format!("traceparent: 00-{trace_id}-{parent}-01\r\n");
    let response = say_hello(&gateway, RELAY, "unexported", &header);
    assert_eq!(response.status, 200, "{}", response.body);

    let greeter_in_trace = || {
        receiver
            .trace(&trace_id)
            .into_iter()
            .find(|s| s.service == GREETER && s.name == "handle")
    };
    wait_until(
        EXPORTED,
        "the greeter's handle span in the client's trace",
        || greeter_in_trace().is_some(),
    );
    let greeter_handle = greeter_in_trace().expect("found above");
    assert_eq!(
        greeter_handle.parent_span_id.len(),
        16,
        "{greeter_handle:?}"
    );
    assert_ne!(
        greeter_handle.parent_span_id, parent,
        "the greeter's parent is the relay's span, not the client's: {greeter_handle:?}"
    );
    assert!(
        receiver.spans().iter().all(|s| s.service == GREETER),
        "only the greeter exports: {:?}",
        receiver.spans()
    );

    wait_until(EXPORTED, "the relay's message of the call on NATS", || {
        collected.messages().iter().any(|m| {
            m.header
                .get("traceparent")
                .is_some_and(|t| t.contains(&trace_id))
        })
    });
    runtime.block_on(async { subscriber.unsubscribe().await.expect("unsubscribe") });
}
