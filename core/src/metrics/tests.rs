//! The metrics as a scraper reads them. The families are process-wide and tests run in
//! parallel, so each test uses a service, topic or node name of its own.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tonic::body::Body;
use tower::ServiceExt;

use super::*;
use crate::broker::{self, Broker, Handler, Message, Reject, SubscribeOptions, Subscription};
use crate::catalog::Catalog;
use crate::wrapper::HandlerService;

/// The value of the sample `name{labels}` in `text`, if there is one.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.parse().expect("a number"))
}

fn trailers(code: i32) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    map.insert("grpc-status", code.into());
    map
}

/// A gRPC answer: one message, then trailers with `code`.
fn streamed(code: i32) -> http::Response<Body> {
    let frames = futures::stream::iter([
        Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
        Ok(Frame::trailers(trailers(code))),
    ]);
    http::Response::new(Body::new(StreamBody::new(frames)))
}

/// A trailers-only answer with `code` and `message` (none when empty).
fn trailers_only(code: tonic::Code, message: &str) -> http::Response<Body> {
    tonic::Status::new(code, message).into_http()
}

/// A handler answering by path: `/ok` streams an OK, `/slow` a body that never ends, `/fail`
/// UNIMPLEMENTED with a message, anything else as tonic does for an unknown method.
fn handlers() -> HandlerService {
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        |request: http::Request<Body>| async move {
            Ok::<_, Infallible>(match request.uri().path() {
                "/t.S/Ok" => streamed(0),
                "/t.S/Slow" => {
                    http::Response::new(Body::new(StreamBody::new(futures::stream::pending::<
                        Result<Frame<Bytes>, tonic::Status>,
                    >())))
                }
                "/t.S/Fail" => trailers_only(tonic::Code::Unimplemented, "not yet"),
                _ => trailers_only(tonic::Code::Unimplemented, ""),
            })
        },
    ))
}

async fn call(service: &HandlerService, path: &str) -> http::Response<Body> {
    let request = http::Request::builder()
        .uri(path)
        .body(Body::empty())
        .expect("a valid request");
    match service.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

#[tokio::test]
async fn the_server_layer_counts_calls_by_endpoint_and_final_code() {
    let service = server_layer("metrics-test-server").wrap(handlers());
    for _ in 0..3 {
        let body = call(&service, "/t.S/Ok").await.into_body();
        let collected = body.collect().await.expect("the body");
        assert_eq!(collected.trailers(), Some(&trailers(0)));
    }
    call(&service, "/t.S/Fail").await;
    call(&service, "/t.S/Nope").await;
    call(&service, "/other.Service/Any").await;

    let slow = call(&service, "/t.S/Slow").await;
    let text = render();
    let labels = |endpoint: &str, code: &str| {
        format!("service=\"metrics-test-server\",endpoint=\"{endpoint}\",code=\"{code}\"")
    };
    let in_flight = "service=\"metrics-test-server\"";
    assert_eq!(
        sample(&text, "micro_server_requests_in_flight", in_flight),
        Some(1.0),
        "the slow call is in flight until its body ends: {text}"
    );
    drop(slow);
    let text = render();
    let requests = "micro_server_requests_total";
    assert_eq!(
        sample(&text, requests, &labels("/t.S/Ok", "OK")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, requests, &labels("/t.S/Fail", "UNIMPLEMENTED")),
        Some(1.0),
        "a handler's own UNIMPLEMENTED keeps its endpoint: {text}"
    );
    assert_eq!(
        sample(&text, requests, &labels("unknown", "UNIMPLEMENTED")),
        Some(2.0),
        "methods the server does not have share one label: {text}"
    );
    assert!(
        !text.contains("/t.S/Nope") && !text.contains("/other.Service/Any"),
        "{text}"
    );
    assert_eq!(
        sample(&text, requests, &labels("/t.S/Slow", "CANCELLED")),
        Some(1.0),
        "a body dropped before its end: {text}"
    );
    assert_eq!(
        sample(&text, "micro_server_requests_in_flight", in_flight),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "micro_server_request_duration_seconds_count",
            "service=\"metrics-test-server\",endpoint=\"/t.S/Ok\""
        ),
        Some(3.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_handler_dropped_before_it_answers_is_cancelled_and_leaves_no_call_in_flight() {
    let never: HandlerService = tower::util::BoxCloneSyncService::new(tower::service_fn(
        |_request: http::Request<Body>| futures::future::pending::<Result<_, Infallible>>(),
    ));
    let service = server_layer("metrics-test-dropped").wrap(never);
    let pending = call(&service, "/t.S/Hang");
    assert!(pending.now_or_never().is_none());
    let text = render();
    assert_eq!(
        sample(
            &text,
            "micro_server_requests_total",
            "service=\"metrics-test-dropped\",endpoint=\"/t.S/Hang\",code=\"CANCELLED\""
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "micro_server_requests_in_flight",
            "service=\"metrics-test-dropped\""
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn client_calls_are_counted_by_node_with_the_code_they_end_with() {
    let (service, endpoint) = ("metrics-test-client", "/t.S/Call");
    let response =
        client_call(service.into(), endpoint.into(), "node-a".into()).response(streamed(14));
    response.into_body().collect().await.expect("the body");
    client_call(service.into(), endpoint.into(), "node-a".into())
        .response(trailers_only(tonic::Code::NotFound, "no such thing"));
    client_call(service.into(), endpoint.into(), "node-b".into()).failed(tonic::Code::Unavailable);
    let mut not_grpc = http::Response::new(Body::empty());
    *not_grpc.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    client_call(service.into(), endpoint.into(), "node-b".into()).response(not_grpc);
    drop(client_call(
        service.into(),
        endpoint.into(),
        "node-c".into(),
    ));
    retried(service);
    ejected(service, "node-b");
    recovered(service, "node-b");
    degraded(service, endpoint);

    let text = render();
    let calls = |node: &str, code: &str| {
        sample(
            &text,
            "micro_client_calls_total",
            &format!(
                "service=\"{service}\",endpoint=\"{endpoint}\",node=\"{node}\",code=\"{code}\""
            ),
        )
    };
    assert_eq!(calls("node-a", "UNAVAILABLE"), Some(1.0), "{text}");
    assert_eq!(calls("node-a", "NOT_FOUND"), Some(1.0), "{text}");
    assert_eq!(calls("node-b", "UNAVAILABLE"), Some(2.0), "{text}");
    assert_eq!(calls("node-c", "CANCELLED"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "micro_client_call_duration_seconds_count",
            &format!("service=\"{service}\",endpoint=\"{endpoint}\",node=\"node-b\"")
        ),
        Some(2.0)
    );
    let node_b = format!("service=\"{service}\",node=\"node-b\"");
    assert_eq!(
        sample(&text, "micro_client_ejections_total", &node_b),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "micro_client_recoveries_total", &node_b),
        Some(1.0)
    );
    let only = format!("service=\"{service}\"");
    assert_eq!(
        sample(&text, "micro_client_retries_total", &only),
        Some(1.0)
    );
    let fallback = format!("service=\"{service}\",endpoint=\"{endpoint}\"");
    assert_eq!(
        sample(&text, "micro_client_fallbacks_total", &fallback),
        Some(1.0)
    );
}

/// `handlers` counted by a server layer whose series are `calls`.
fn counted(calls: &Arc<ServerCalls>, handlers: HandlerService) -> HandlerService {
    tower::util::BoxCloneSyncService::new(Counted {
        inner: handlers,
        calls: calls.clone(),
    })
}

#[tokio::test]
async fn a_server_keeps_the_series_of_the_methods_it_answered_and_no_other_path() {
    let calls = Arc::new(ServerCalls::new("metrics-test-known"));
    let service = counted(&calls, handlers());
    for path in [
        "/t.S/Ok",
        "/t.S/Ok",
        "/t.S/Fail",
        "/t.S/Nope",
        "/other.Service/Any",
    ] {
        call(&service, path)
            .await
            .into_body()
            .collect()
            .await
            .expect("the body");
    }
    let never: HandlerService = tower::util::BoxCloneSyncService::new(tower::service_fn(
        |_request: http::Request<Body>| futures::future::pending::<Result<_, Infallible>>(),
    ));
    assert!(
        call(&counted(&calls, never), "/t.S/Hang")
            .now_or_never()
            .is_none()
    );
    assert_eq!(
        calls.known_paths(),
        ["/t.S/Fail", "/t.S/Ok"],
        "neither unknown methods nor a call dropped before any answer"
    );
    // Counted the same through the kept series as through a lookup.
    call(&service, "/t.S/Ok")
        .await
        .into_body()
        .collect()
        .await
        .expect("the body");
    let text = render();
    let requests = |endpoint: &str, code: &str| {
        let labels =
            format!("service=\"metrics-test-known\",endpoint=\"{endpoint}\",code=\"{code}\"");
        sample(&text, "micro_server_requests_total", &labels)
    };
    assert_eq!(requests("/t.S/Ok", "OK"), Some(3.0), "{text}");
    assert_eq!(requests("/t.S/Fail", "UNIMPLEMENTED"), Some(1.0), "{text}");
    assert_eq!(requests("unknown", "UNIMPLEMENTED"), Some(2.0), "{text}");
    assert_eq!(requests("/t.S/Hang", "CANCELLED"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "micro_server_request_duration_seconds_count",
            "service=\"metrics-test-known\",endpoint=\"/t.S/Ok\""
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "micro_server_requests_in_flight",
            "service=\"metrics-test-known\""
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_server_answering_any_path_keeps_a_bounded_number_of_them() {
    let calls = Arc::new(ServerCalls::new("metrics-test-bounded"));
    let any: HandlerService = tower::util::BoxCloneSyncService::new(tower::service_fn(
        |_request: http::Request<Body>| async {
            Ok::<_, Infallible>(trailers_only(tonic::Code::Ok, ""))
        },
    ));
    let service = counted(&calls, any);
    let paths: Vec<String> = (0..body::SERVER_ENDPOINTS + 3)
        .map(|i| format!("/t.S/M{i}"))
        .collect();
    for path in paths.iter().chain(paths.iter().rev()) {
        call(&service, path).await;
    }
    assert_eq!(calls.known_paths().len(), body::SERVER_ENDPOINTS);
    let text = render();
    for path in &paths {
        let labels = format!("service=\"metrics-test-bounded\",endpoint=\"{path}\",code=\"OK\"");
        assert_eq!(
            sample(&text, "micro_server_requests_total", &labels),
            Some(2.0),
            "{path}, kept or not"
        );
    }
}

#[tokio::test]
async fn a_node_keeps_the_series_of_its_endpoints_within_a_bound() {
    let node = NodeCalls::new("node-kept".into());
    let service: Arc<str> = "metrics-test-node".into();
    let endpoint: Arc<str> = "/t.S/Call".into();
    let kept = node.endpoint(&service, &endpoint);
    assert!(Arc::ptr_eq(
        &kept,
        &node.endpoint(&service, &"/t.S/Call".into())
    ));
    let response = node.call(&service, &endpoint).response(streamed(0));
    response.into_body().collect().await.expect("the body");
    node.call(&service, &endpoint)
        .response(trailers_only(tonic::Code::NotFound, "no such thing"));
    node.call(&service, &endpoint)
        .failed(tonic::Code::Unavailable);
    client_call(service.clone(), endpoint.clone(), "node-kept".into())
        .failed(tonic::Code::Unavailable);
    // Another service through the same node: labelled with its own name.
    let other: Arc<str> = "metrics-test-node-other".into();
    node.call(&other, &endpoint)
        .failed(tonic::Code::Unavailable);
    let paths: Vec<Arc<str>> = (0..body::NODE_ENDPOINTS + 2)
        .map(|i| format!("/t.S/M{i}").into())
        .collect();
    for path in &paths {
        node.call(&service, path).failed(tonic::Code::Unavailable);
    }
    assert_eq!(node.known_paths().len(), body::NODE_ENDPOINTS);
    assert!(node.known_paths().contains(&endpoint.to_string()));

    let text = render();
    let calls = |service: &str, endpoint: &str, code: &str| {
        let labels = format!(
            "service=\"{service}\",endpoint=\"{endpoint}\",node=\"node-kept\",code=\"{code}\""
        );
        sample(&text, "micro_client_calls_total", &labels)
    };
    assert_eq!(calls(&service, &endpoint, "OK"), Some(1.0), "{text}");
    assert_eq!(calls(&service, &endpoint, "NOT_FOUND"), Some(1.0), "{text}");
    assert_eq!(
        calls(&service, &endpoint, "UNAVAILABLE"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(calls(&other, &endpoint, "UNAVAILABLE"), Some(1.0), "{text}");
    for path in &paths {
        assert_eq!(calls(&service, path, "UNAVAILABLE"), Some(1.0), "{path}");
    }
    assert_eq!(
        sample(
            &text,
            "micro_client_call_duration_seconds_count",
            &format!("service=\"{service}\",endpoint=\"{endpoint}\",node=\"node-kept\"")
        ),
        Some(4.0)
    );
}

/// A broker that hands each message to its subscribers during `publish`.
#[derive(Default)]
struct Inline {
    handlers: std::sync::Mutex<Vec<(String, Handler)>>,
}

struct Subscribed(String);

#[async_trait::async_trait]
impl Subscription for Subscribed {
    fn topic(&self) -> &str {
        &self.0
    }
    async fn unsubscribe(self: Box<Self>) -> crate::Result<()> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl Broker for Inline {
    fn name(&self) -> &str {
        "inline"
    }
    async fn publish(&self, topic: &str, message: Message) -> crate::Result<()> {
        broker::validate_topic(topic)?;
        let handlers: Vec<Handler> = {
            let all = self.handlers.lock().expect("not poisoned");
            all.iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, h)| h.clone())
                .collect()
        };
        for handler in handlers {
            // As every broker does: a panic is a failed delivery, not the publisher's.
            let _ = broker::deliver(&handler, message.clone()).await;
        }
        Ok(())
    }
    async fn subscribe(
        &self,
        topic: &str,
        handler: Handler,
        _options: SubscribeOptions,
    ) -> crate::Result<Box<dyn Subscription>> {
        self.handlers
            .lock()
            .expect("not poisoned")
            .push((topic.to_string(), handler));
        Ok(Box::new(Subscribed(topic.to_string())))
    }
}

#[tokio::test]
async fn the_catalogs_brokers_count_publishes_and_deliveries_by_topic_and_result() {
    let mut catalog = Catalog::new();
    catalog.add_broker("inline", |_| async {
        Ok(Arc::new(Inline::default()) as Arc<dyn Broker>)
    });
    let broker = catalog
        .broker_named("inline", None, &Options::default())
        .await
        .expect("the inline broker");
    let topic = "metrics.test.orders";
    broker
        .subscribe(
            topic,
            broker::handler(|message: Message| async move {
                match &message.body[..] {
                    b"bad" => Err(Reject("not an order".into()).into()),
                    b"later" => Err("the database is down".into()),
                    b"boom" => panic!("a bug"),
                    _ => Ok(()),
                }
            }),
            SubscribeOptions::default(),
        )
        .await
        .expect("subscribed");
    for body in ["ok", "ok", "bad", "later", "boom"] {
        broker
            .publish(topic, Message::new(body))
            .await
            .expect("published");
    }
    assert!(
        broker
            .publish("bad topic!", Message::new("x"))
            .await
            .is_err()
    );

    let text = render();
    let labels = |result: &str| format!("topic=\"{topic}\",result=\"{result}\"");
    assert_eq!(
        sample(&text, "micro_broker_published_total", &labels("ok")),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "micro_broker_published_total",
            "topic=\"invalid\",result=\"error\""
        ),
        Some(1.0),
        "{text}"
    );
    let consumed = |result: &str| sample(&text, "micro_broker_consumed_total", &labels(result));
    assert_eq!(consumed("ok"), Some(2.0), "{text}");
    assert_eq!(consumed("rejected"), Some(1.0), "{text}");
    assert_eq!(consumed("error"), Some(1.0), "{text}");
    assert_eq!(consumed("panicked"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "micro_broker_handler_duration_seconds_count",
            &format!("topic=\"{topic}\"")
        ),
        Some(5.0)
    );
}

/// `GET path` on `address` over HTTP/1.1: the whole response as text.
async fn get(address: std::net::SocketAddr, method: &str, path: &str) -> String {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream.write_all(request.as_bytes()).expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    })
    .await
    .expect("the request thread")
}

#[tokio::test]
async fn metrics_address_serves_the_text_format_until_dropped() {
    let options = Options {
        metrics_address: Some("127.0.0.1:0".into()),
        ..Options::default()
    };
    let server = serve(&options).await.expect("bound").expect("served");
    let address = server.address();
    assert_ne!(address.port(), 0);
    server_layer("metrics-test-http");
    retried("metrics-test-http");

    let response = get(address, "GET", "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{response}"
    );
    assert!(
        response.contains("micro_client_retries_total{service=\"metrics-test-http\"} 1"),
        "{response}"
    );
    assert!(
        get(address, "GET", "/other")
            .await
            .starts_with("HTTP/1.1 404")
    );
    let post = get(address, "POST", "/metrics").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");

    // The port is taken: the error names the option and the address.
    let taken = Options {
        metrics_address: Some(address.to_string()),
        ..Options::default()
    };
    let error = serve(&taken)
        .await
        .expect_err("the port is in use")
        .to_string();
    assert!(
        error.contains("metrics-address") && error.contains(&address.to_string()),
        "{error}"
    );

    drop(server);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(address).is_ok() {
        assert!(Instant::now() < deadline, "still listening after the drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        serve(&Options::default())
            .await
            .expect("no address")
            .is_none()
    );
}
