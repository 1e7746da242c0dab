//! The gateway against services that change under it: a plain tonic server (not built with the
//! framework, v1alpha reflection only) registered by hand, and a service redeployed with a new
//! method. Both with no gateway restart.

use std::sync::Arc;
use std::time::Duration;

use micro_core::registry::{Node, Registry, Service};
use micro_gateway::{Gateway, GatewayOptions, RunningGateway};
use micro_memory::MemoryRegistry;
use micro_testkit::greeter::v2::greeter_server::GreeterServer as GreeterV2Server;
use micro_testkit::{
    GreeterV2, PROPAGATION, get, greeter, post, raw_http, start_greeter, start_greeter_v2,
    wait_until,
};

fn start_gateway(
    runtime: &tokio::runtime::Runtime,
    registry: Arc<dyn Registry>,
    extra: &[&str],
) -> RunningGateway {
    let mut args = vec![
        "gateway",
        "--address",
        "127.0.0.1:0",
        "--registry-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let options = GatewayOptions::load_from(args).expect("gateway options");
    runtime.block_on(async {
        Gateway::new(options, registry)
            .start()
            .await
            .expect("start gateway")
    })
}

#[test]
fn plain_tonic_server_with_v1alpha_reflection_registered_by_hand() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let gateway = start_gateway(&runtime, registry.clone(), &[]);
    let address = runtime.block_on(async {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(greeter::DESCRIPTORS_V2)
            .build_v1alpha()
            .expect("reflection");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GreeterV2Server::new(GreeterV2))
                .add_service(reflection)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let service = Service {
            name: "plain".into(),
            version: "1".into(),
            nodes: vec![Node {
                id: "plain-1".into(),
                address: address.to_string(),
                ..Default::default()
            }],
            ..Default::default()
        };
        registry
            .register(&service, Duration::from_secs(60))
            .await
            .expect("register by hand");
        address
    });
    let response = post(
        gateway.http_address(),
        "/plain/Greeter/SayGoodbye",
        r#"{"name":"Al","times":2,"request_id":"7"}"#,
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json(),
        serde_json::json!({"message": "Goodbye Al Goodbye Al", "requestId": "7", "polite": false}),
        "camelCase out, int64 as string, defaults emitted"
    );
    // A handler error keeps its code: INVALID_ARGUMENT is 400.
    let response = post(
        gateway.http_address(),
        "/plain/greeter.v2.Greeter/say-goodbye",
        r#"{"times":-1}"#,
    );
    assert_eq!(response.status, 400, "{}", response.body);
    assert_eq!(response.json()["code"], 3);
    // GET maps the query onto fields, typed by the descriptor.
    let response = get(
        gateway.http_address(),
        "/plain/SayGoodbye?name=Bo&times=3&requestId=9",
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json()["message"],
        "Goodbye Bo Goodbye Bo Goodbye Bo"
    );
    eprintln!("plain tonic server on {address} called through the gateway");
    runtime.block_on(gateway.stop()).expect("stop");
}

#[test]
fn redeployed_service_is_callable_by_its_new_method_without_restart() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let gateway = start_gateway(&runtime, registry.clone(), &[]);
    let v1 = runtime.block_on(start_greeter(registry.clone(), "Hello"));
    let response = post(
        gateway.http_address(),
        "/greeter/Greeter/SayHello",
        r#"{"name":"v1"}"#,
    );
    assert_eq!(
        (response.status, response.json()["message"].clone()),
        (200, "Hello v1".into())
    );
    let response = post(
        gateway.http_address(),
        "/greeter/Greeter/SayGoodbye",
        r#"{"name":"v1"}"#,
    );
    assert_eq!(
        response.status, 404,
        "v1 has no SayGoodbye: {}",
        response.body
    );
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("SayHello"),
        "the 404 lists what exists"
    );

    runtime.block_on(v1.stop()).expect("stop v1");
    let v2 = runtime.block_on(start_greeter_v2(registry.clone()));
    wait_until(PROPAGATION, "the new method is routable", || {
        post(
            gateway.http_address(),
            "/greeter/Greeter/SayGoodbye",
            r#"{"name":"v2"}"#,
        )
        .status
            == 200
    });
    let response = post(
        gateway.http_address(),
        "/greeter/Greeter/SayGoodbye",
        r#"{"name":"v2"}"#,
    );
    assert_eq!(response.json()["message"], "Goodbye v2");
    runtime.block_on(async {
        v2.stop().await.expect("stop v2");
        gateway.stop().await.expect("stop gateway");
    });
}

#[test]
fn cors_preflight_and_headers() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let gateway = start_gateway(
        &runtime,
        registry.clone(),
        &["--cors-origins", "https://app.example"],
    );
    let server = runtime.block_on(start_greeter(registry.clone(), "Hello"));
    let preflight = raw_http(gateway.http_address(), b"OPTIONS /greeter/SayHello HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n");
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("content-type")
    );
    let other = raw_http(gateway.http_address(), b"OPTIONS /greeter/SayHello HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n");
    assert_eq!(other.status, 405, "an origin not listed gets no preflight");
    let body = r#"{"name":"c"}"#;
    let call = raw_http(gateway.http_address(), format!("POST /greeter/SayHello HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes());
    assert_eq!(
        (call.status, call.header("access-control-allow-origin")),
        (200, Some("https://app.example"))
    );
    let metrics = get(gateway.http_address(), "/metrics");
    assert!(metrics.body.contains("micro_gateway_requests_total{service=\"greeter\",endpoint=\"Greeter.SayHello\",status=\"200\"} 1"), "{}", metrics.body);
    runtime.block_on(async {
        server.stop().await.expect("stop");
        gateway.stop().await.expect("stop gateway");
    });
}
