//! Health that means something. The gateway's `/health/ready` is 503 naming the `--require`d
//! services that have no serving node (or the registry's error) and 200 once they have one;
//! `/health` stays the liveness probe. A greeter told to stop while a slow call runs answers
//! NOT_SERVING to gRPC health checks (a well-known client: tonic-health's) from the moment it
//! starts stopping, still accepts while it drains, marks its node `health=not_serving` in the
//! registry before it deregisters (registry watchers see it), and finishes the call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use micro_core::Registry;
use micro_core::registry::{Event, EventKind};
use micro_core::server::{HEALTH_METADATA, NOT_SERVING};
use micro_testkit::greeter::v1::HelloRequest;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use micro_testkit::{GatewayProcess, PROPAGATION, SLACK, eventually, get, wait_until};
use tonic::transport::Channel;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[test]
fn ready_names_the_required_services_without_a_node_until_they_have_one() {
    // Comma-separated, from the environment (the flag is used in the other test).
    let gateway =
        GatewayProcess::start_with_env(&[], &[("MICRO_GATEWAY_REQUIRE", "greeter, orders")]);
    let ready = get(gateway.http, "/health/ready");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let json = ready.json();
    assert_eq!(
        json["missing"],
        serde_json::json!(["greeter", "orders"]),
        "{json}"
    );
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains("greeter")),
        "{json}"
    );
    assert_eq!(json["registry"]["reachable"], true, "{json}");
    let live = get(gateway.http, "/health");
    assert_eq!(live.status, 200, "liveness is not readiness: {}", live.body);

    let _greeter = gateway.greeter(&[]);
    wait_until(PROPAGATION, "only orders is missing", || {
        get(gateway.http, "/health/ready").json()["missing"] == serde_json::json!(["orders"])
    });
    let _orders = gateway.greeter(&["--server-name", "orders"]);
    wait_until(PROPAGATION, "/health/ready is 200", || {
        get(gateway.http, "/health/ready").status == 200
    });
    let ready = get(gateway.http, "/health/ready").json();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["required"], serde_json::json!(["greeter", "orders"]));

    // Nothing required: ready as soon as the registry answers.
    let bare = GatewayProcess::start(&[]);
    assert_eq!(get(bare.http, "/health/ready").status, 200);
}

async fn status(health: &mut HealthClient<Channel>, service: &str) -> Result<i32, tonic::Status> {
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[test]
fn a_stopping_greeter_is_not_serving_while_it_drains_and_says_so_in_the_registry() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let gateway = GatewayProcess::start(&["--require", "greeter"]);
    // A long TTL and interval: what the registry shows comes from the stop, not from a lapse.
    let mut greeter = gateway.greeter(&[
        "--reply-delay",
        "3s",
        "--register-ttl",
        "30s",
        "--register-interval",
        "10s",
        "--shutdown-timeout",
        "20s",
    ]);
    let address = greeter.listening_address();
    wait_until(PROPAGATION, "the gateway is ready", || {
        get(gateway.http, "/health/ready").status == 200
    });
    let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
    let endpoint = format!("http://{address}");

    let reply = runtime.block_on(async {
        let registry = micro_remote::RemoteRegistry::new(&gateway.registry.to_string())
            .expect("remote registry");
        let mut watcher = registry.watch(Some("greeter")).await.expect("watch");
        let collected = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = watcher.next().await {
                collected.lock().expect("events").push(event);
            }
        });
        let channel = Channel::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the greeter");
        let mut health = HealthClient::new(channel.clone());
        assert_eq!(
            status(&mut health, "").await.expect("check"),
            ServingStatus::Serving as i32
        );
        // The slow call, sent first on the connection the health check then uses: when the
        // check is answered, the server has taken the call.
        let mut greeter_client = GreeterClient::new(channel);
        let mut call = Box::pin(async move {
            greeter_client
                .say_hello(HelloRequest {
                    name: "slow".into(),
                })
                .await
        });
        assert!(futures::poll!(&mut call).is_pending());
        let call = tokio::spawn(call);
        assert_eq!(
            status(&mut health, "greeter.v1.Greeter")
                .await
                .expect("check"),
            ServingStatus::Serving as i32
        );
        greeter.terminate();
        // NOT_SERVING from the moment stop begins, for the whole server and each service.
        let until = tokio::time::Instant::now() + SLACK;
        loop {
            let answer = status(&mut health, "").await;
            if answer.as_ref().ok() == Some(&(ServingStatus::NotServing as i32)) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "the greeter does not report NOT_SERVING within {SLACK:?} of SIGTERM; the last \
                 check answered {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            status(&mut health, "greeter.v1.Greeter")
                .await
                .expect("check while draining"),
            ServingStatus::NotServing as i32
        );
        // Still accepting while it drains: a new connection is answered too.
        let fresh_channel = Channel::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect while draining");
        let mut fresh = HealthClient::new(fresh_channel);
        assert_eq!(
            status(&mut fresh, "")
                .await
                .expect("check on a new connection"),
            ServingStatus::NotServing as i32
        );
        assert!(
            !call.is_finished(),
            "the slow call is still running: the checks were made while draining"
        );
        // Readiness follows: the greeter's only node is stopping (then gone) while it drains.
        let http = gateway.http;
        tokio::task::spawn_blocking(move || {
            wait_until(PROPAGATION, "/health/ready is 503 again", || {
                get(http, "/health/ready").status == 503
            })
        })
        .await
        .expect("readiness poll");
        call.await
            .expect("call task")
            .expect("the in-flight call completes")
    });
    assert_eq!(reply.into_inner().message, "Hello slow");
    let exit = greeter.wait(Duration::from_secs(10));
    assert!(
        exit.success(),
        "exit status {exit:?}; stderr: {}",
        greeter.stderr()
    );

    runtime.block_on(eventually(
        SLACK,
        "the watcher saw the node deregistered",
        || async {
            seen.lock()
                .expect("events")
                .iter()
                .any(|e| e.kind == EventKind::Delete)
        },
    ));
    let events = seen.lock().expect("events").clone();
    let stopping = events.iter().position(|e| {
        e.kind == EventKind::Update
            && e.service
                .nodes
                .iter()
                .any(|n| n.metadata.get(HEALTH_METADATA).map(String::as_str) == Some(NOT_SERVING))
    });
    let deleted = events.iter().position(|e| e.kind == EventKind::Delete);
    assert!(
        matches!((stopping, deleted), (Some(s), Some(d)) if s < d),
        "an update with {HEALTH_METADATA}={NOT_SERVING} before the delete: {events:?}"
    );
}
