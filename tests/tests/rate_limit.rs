//! The rate limit wrapper on one endpoint, on all handlers, and on the client.

use std::sync::Arc;
use std::time::Duration;

use micro_core::registry::Registry;
use micro_core::wrapper::RateLimitLayer;
use micro_core::{Client, Server};
use micro_memory::MemoryRegistry;
use micro_testkit::greeter::v1::HelloRequest;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use micro_testkit::{Greeter, greeter_server, test_options};

/// The greeter, not yet started: wrap it, then start it.
fn greeter(registry: Arc<dyn Registry>) -> Server {
    greeter_server(test_options("greeter"), registry, Greeter::default())
}

/// Fires `n` calls at once and returns (ok, resource exhausted).
async fn burst(client: &Client, n: usize) -> (usize, usize) {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let mut greeter = GreeterClient::new(client.channel("greeter"));
            tokio::spawn(async move {
                greeter
                    .say_hello(HelloRequest {
                        name: format!("n{i}"),
                    })
                    .await
            })
        })
        .collect();
    let (mut ok, mut exhausted) = (0, 0);
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => ok += 1,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    status.message().contains("rate limit"),
                    "{}",
                    status.message()
                );
                exhausted += 1;
            }
            Err(status) => panic!("unexpected status {status:?}"),
        }
    }
    (ok, exhausted)
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_limit_refuses_exactly_the_excess_then_recovers() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    // 1 call/s with a burst of 10: 15 calls at once -> 10 pass, 5 refused.
    let server = greeter(registry.clone())
        .wrap_endpoint("Greeter.SayHello", RateLimitLayer::per_second(1).burst(10))
        .start()
        .await
        .expect("start");
    let client = Client::new(&test_options("client"), registry);
    assert_eq!(burst(&client, 15).await, (10, 5));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        burst(&client, 1).await,
        (1, 0),
        "a permit is back after a second"
    );
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_endpoint_to_wrap_is_an_error_at_start() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let result = greeter(registry)
        .wrap_endpoint("Greeter.SayGoodbye", RateLimitLayer::per_second(1))
        .start()
        .await;
    let err = result.expect_err("unknown endpoint refused").to_string();
    assert!(
        err.contains("Greeter.SayGoodbye") && err.contains("Greeter.SayHello"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_side_limit_and_wait_mode() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let server = greeter(registry.clone())
        .wrap(
            RateLimitLayer::per_second(2)
                .burst(1)
                .wait(Duration::from_secs(2)),
        )
        .start()
        .await
        .expect("start");
    // The server waits (up to 2 s) instead of refusing: 3 calls at 2/s all pass.
    let plain = Client::new(&test_options("client"), registry.clone());
    assert_eq!(burst(&plain, 3).await, (3, 0));

    // A client-side limiter refuses at once.
    let limited =
        Client::new(&test_options("client"), registry).wrap(RateLimitLayer::per_second(1).burst(2));
    assert_eq!(burst(&limited, 4).await, (2, 2));
    server.stop().await.expect("stop");
}
