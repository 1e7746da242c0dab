//! Server and client in one process over the memory registry: load balancing, retry after an
//! abrupt stop, TTL expiry, timeouts, the client options set in code taking effect on calls,
//! errors that name the service and registry.

use std::sync::Arc;
use std::time::Duration;

use micro_core::registry::{Node, Registry, Service};
use micro_core::{Client, Options};
use micro_memory::MemoryRegistry;
use micro_testkit::greeter::v1::HelloRequest;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use micro_testkit::{
    EXPIRY, Greeter, SLACK, eventually, greeter_server, start_greeter, test_options,
};

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
            SLACK,
            "the crashed server's port refuses connections",
            || async move {
                tokio::net::TcpStream::connect(doomed_address)
                    .await
                    .is_err()
            },
        )
        .await;
        // A connection the client already holds to the dead node may still take one call
        // before its close is noticed: that call fails as "may have reached its handler" and
        // is rightly not retried. At most one such failure; then every call succeeds.
        let raced = std::sync::atomic::AtomicUsize::new(0);
        eventually(SLACK, "a call succeeds after the crash", || {
            let client = client.clone();
            let raced = &raced;
            async move {
                match greet(&client, "after").await {
                    Ok(reply) => reply == "A after",
                    Err(e) => {
                        assert!(
                            e.message().contains("may have reached its handler"),
                            "a call after the crash failed for another reason: {e}"
                        );
                        raced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        false
                    }
                }
            }
        })
        .await;
        let raced = raced.into_inner();
        assert!(raced <= 1, "{raced} calls failed after the crash");
        for i in 0..20 {
            let reply = greet(&client, "after")
                .await
                .unwrap_or_else(|e| panic!("call {i} after the crash failed: {e}"));
            assert_eq!(reply, "A after");
        }
        eventually(
            EXPIRY,
            "the crashed node leaves the registry within its TTL (and slack)",
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
    let slow = start_slow_greeter(registry.clone()).await;
    let timeout = Duration::from_millis(200);
    let client = Client::new(&test_options("client"), registry).timeout(timeout);
    assert_deadline_exceeded(&client, timeout).await;
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

/// A greeter whose every reply takes 5 s.
async fn start_slow_greeter(registry: Arc<dyn Registry>) -> micro_core::server::RunningServer {
    let handler = Greeter {
        delay: Duration::from_secs(5),
        ..Greeter::default()
    };
    greeter_server(test_options("greeter"), registry, handler)
        .start()
        .await
        .expect("start the slow greeter")
}

/// Calls the slow greeter through `client`: the call must end `DEADLINE_EXCEEDED` after
/// `timeout`, long before the handler's 5 s.
async fn assert_deadline_exceeded(client: &Client, timeout: Duration) {
    let started = std::time::Instant::now();
    let status = greet(client, "slow").await.expect_err("times out");
    let took = started.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        took >= timeout && took < Duration::from_secs(4),
        "ended by the {timeout:?} timeout, not the handler: {took:?}"
    );
}

/// Options of a client named `client`, with `key = value` set in code.
fn client_options(settings: &[(&str, &str)]) -> Options {
    settings
        .iter()
        .fold(Options::new("client"), |options, (key, value)| {
            options.set(key, value)
        })
        .load_from(["test"])
        .expect("client options")
}

#[tokio::test(flavor = "multi_thread")]
async fn client_timeout_set_in_code_ends_a_slow_call() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let slow = start_slow_greeter(registry.clone()).await;
    // The default timeout is 30 s: only the option can end the 5 s call early.
    let client = Client::new(&client_options(&[("client-timeout", "150ms")]), registry);
    assert_deadline_exceeded(&client, Duration::from_millis(150)).await;
    drop(slow);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_retries_set_in_code_decide_whether_a_dead_node_fails_the_call() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let live = start_greeter(registry.clone(), "Hello").await;
    // A second node that refuses connections: a call sent there reaches no handler, so it is
    // retried on the live node when retries are allowed, and fails when they are not.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let mut registration: Service = live.registration().clone();
    registration.nodes = vec![Node {
        id: "greeter-dead".into(),
        address: dead.to_string(),
        ..Node::default()
    }];
    registry
        .register(&registration, Duration::from_secs(60))
        .await
        .expect("register the dead node");
    eventually(SLACK, "both nodes listed", || async {
        let services = registry.get_service("greeter").await.expect("get");
        services.iter().map(|s| s.nodes.len()).sum::<usize>() == 2
    })
    .await;

    let calls = |client: Client| async move {
        let mut failed = Vec::new();
        for _ in 0..10 {
            if let Err(status) = greet(&client, "x").await {
                failed.push(status);
            }
        }
        failed
    };
    let with_retries = client_options(&[("client-retries", "2")]);
    let failed = calls(Client::new(&with_retries, registry.clone())).await;
    assert!(failed.is_empty(), "retried on the live node: {failed:?}");

    let without = client_options(&[("client-retries", "0")]);
    let failed = calls(Client::new(&without, registry.clone())).await;
    assert!(
        !failed.is_empty(),
        "with retries 0 a call picked for the dead node fails"
    );
    assert!(
        failed
            .iter()
            .all(|status| status.code() == tonic::Code::Unavailable),
        "{failed:?}"
    );
    live.stop().await.expect("stop");
}
