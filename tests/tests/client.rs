//! Server and client in one process over the memory registry: load balancing, retry after an
//! abrupt stop, TTL expiry, timeouts, errors that name the service and registry.

use std::sync::Arc;
use std::time::Duration;

use micro_core::registry::Registry;
use micro_core::{Client, Options};
use micro_examples::greeter::v1::HelloRequest;
use micro_examples::greeter::v1::greeter_client::GreeterClient;
use micro_memory::MemoryRegistry;
use micro_tests::{eventually, start_greeter, test_options};

async fn greet(client: &Client, name: &str) -> Result<String, tonic::Status> {
    let mut greeter = GreeterClient::new(client.channel("greeter"));
    Ok(greeter
        .say_hello(HelloRequest { name: name.into() })
        .await?
        .into_inner()
        .message)
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_spread_round_robin_over_two_servers() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let a = start_greeter(registry.clone(), "A").await;
    let b = start_greeter(registry.clone(), "B").await;
    let client = Client::new(&test_options("client"), registry.clone());
    let (mut from_a, mut from_b) = (0u32, 0u32);
    for _ in 0..100 {
        match greet(&client, "x").await.expect("call").as_str() {
            "A x" => from_a += 1,
            "B x" => from_b += 1,
            other => panic!("unexpected reply {other}"),
        }
    }
    assert!(
        from_a.abs_diff(from_b) <= 1,
        "uneven: A {from_a}, B {from_b}"
    );
    a.stop().await.expect("stop a");
    b.stop().await.expect("stop b");
}

#[test]
fn abrupt_stop_is_retried_on_the_other_node_and_expires_after_the_ttl() {
    let main = tokio::runtime::Runtime::new().expect("runtime");
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let survivor = main.block_on(start_greeter(registry.clone(), "A"));

    // The doomed server runs on a runtime of its own: dropping that runtime closes its sockets
    // and stops its heartbeat without deregistering, as a crash would.
    let doomed_runtime = tokio::runtime::Runtime::new().expect("runtime");
    let doomed = doomed_runtime.block_on(start_greeter(registry.clone(), "B"));
    let doomed_id = doomed.registration().nodes[0].id.clone();

    let client = Client::new(&test_options("client"), registry.clone());
    main.block_on(async {
        for _ in 0..4 {
            greet(&client, "warm").await.expect("both nodes up");
        }
    });
    // The crash: every task of the doomed runtime (listener, connections, heartbeat) is dropped
    // before this returns. A call racing a crash may reach the dying node and is then not
    // retried (it may have run); the calls after it must all succeed.
    let doomed_address = doomed.address();
    drop(doomed);
    doomed_runtime.shutdown_timeout(Duration::from_secs(5));
    main.block_on(async {
        eventually(
            Duration::from_secs(5),
            "the crashed server's port refuses connections",
            || async move {
                tokio::net::TcpStream::connect(doomed_address)
                    .await
                    .is_err()
            },
        )
        .await;
        for i in 0..20 {
            let reply = greet(&client, "after")
                .await
                .unwrap_or_else(|e| panic!("call {i} after the crash failed: {e}"));
            assert_eq!(reply, "A after");
        }
        eventually(
            Duration::from_secs(2) + Duration::from_secs(1),
            "the crashed node leaves the registry within TTL + 1 s",
            || async {
                let nodes: Vec<String> = registry
                    .get_service("greeter")
                    .await
                    .expect("get")
                    .into_iter()
                    .flat_map(|s| s.nodes)
                    .map(|n| n.id)
                    .collect();
                !nodes.contains(&doomed_id) && nodes.len() == 1
            },
        )
        .await;
        survivor.stop().await.expect("stop");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn no_live_node_names_the_service_and_registry() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let client = Client::new(&test_options("client"), registry);
    let mut greeter = GreeterClient::new(client.channel("nobody"));
    let status = greeter
        .say_hello(HelloRequest::default())
        .await
        .expect_err("no such service");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("`nobody`") && status.message().contains("`memory`"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_call_timeout_is_deadline_exceeded() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let slow = micro_core::Server::new(test_options("greeter"), registry.clone())
        .add_service(
            micro_examples::greeter::v1::greeter_server::GreeterServer::new(
                micro_examples::Greeter {
                    delay: Duration::from_secs(5),
                    ..Default::default()
                },
            ),
        )
        .start()
        .await
        .expect("start");
    let client = Client::new(&test_options("client"), registry).timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let status = greet(&client, "slow").await.expect_err("times out");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout, not the handler, ended the call"
    );
    drop(slow);
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_real_port_and_endpoints_from_descriptors() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let server = start_greeter(registry.clone(), "Hello").await;
    let services = registry.get_service("greeter").await.expect("get");
    let node = &services[0].nodes[0];
    assert_eq!(node.address, server.address().to_string());
    assert_ne!(server.address().port(), 0);
    let endpoint = services[0]
        .endpoints
        .iter()
        .find(|e| e.name == "Greeter.SayHello")
        .expect("endpoint Greeter.SayHello");
    assert_eq!(
        endpoint.request.as_ref().expect("request").full_name,
        "greeter.v1.HelloRequest"
    );
    assert_eq!(
        endpoint.metadata["grpc_method"],
        "/greeter.v1.Greeter/SayHello"
    );

    // Health is served for the registered gRPC service.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.address()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "greeter.v1.Greeter".into(),
        })
        .await
        .expect("health");
    assert_eq!(
        status.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await.expect("stop");
    assert!(
        registry
            .get_service("greeter")
            .await
            .expect("get")
            .is_empty(),
        "stop deregisters"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn options_from_code_reach_the_client() {
    let options = Options::new("c")
        .set("client-timeout", "150ms")
        .load_from(["test"])
        .expect("options");
    assert_eq!(options.client_timeout, Duration::from_millis(150));
}
