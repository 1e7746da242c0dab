//! Version-aware routing, as a user runs it: greeter processes registered as `v1` and `v2`
//! (each replying with its own greeting, so a reply tells which version answered) behind a
//! gateway process. A client pinned with `Filter::version("v2")` reaches only v2 nodes; the
//! gateway's `Micro-Version` header does the same over HTTP; without a version every version
//! answers; a version no node has is refused, naming the versions that exist.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use micro_core::client::Filter;
use micro_core::{Client, Registry};
use micro_testkit::greeter::v1::HelloRequest;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use micro_testkit::{GatewayProcess, HttpResponse, Process, raw_http, test_options, wait_until};

const CALLS: usize = 50;

/// A gateway and three greeters: `One` registered as v1, `TwoA` and `TwoB` as v2.
struct Deployment {
    gateway: GatewayProcess,
    _greeters: Vec<Process>,
}

fn deploy() -> Deployment {
    let gateway = GatewayProcess::start(&[]);
    let greeters = [("v1", "One"), ("v2", "TwoA"), ("v2", "TwoB")]
        .into_iter()
        .map(|(version, greeting)| {
            gateway.greeter(&["--server-version", version, "--greeting", greeting])
        })
        .collect();
    Deployment {
        gateway,
        _greeters: greeters,
    }
}

/// The greeting of a reply (`"TwoA x"` → `"TwoA"`).
fn greeting(message: &str) -> String {
    message
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `POST /greeter/Greeter/SayHello` through the gateway, with `Micro-Version: version` when
/// given.
fn say_hello(gateway: SocketAddr, version: Option<&str>) -> HttpResponse {
    let body = r#"{"name":"x"}"#;
    let header = version.map_or(String::new(), |v| format!("Micro-Version: {v}\r\n"));
    let request = format!(
        "POST /greeter/Greeter/SayHello HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         {header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(gateway, request.as_bytes())
}

/// How many of `CALLS` gateway calls each greeting answered.
fn gateway_replies(gateway: SocketAddr, version: Option<&str>) -> BTreeMap<String, usize> {
    let mut replies = BTreeMap::new();
    for _ in 0..CALLS {
        let response = say_hello(gateway, version);
        assert_eq!(response.status, 200, "{}", response.body);
        let message = response.json()["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message in {}", response.body))
            .to_string();
        *replies.entry(greeting(&message)).or_default() += 1;
    }
    replies
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn a_client_pinned_to_v2_reaches_only_v2_nodes() {
    let deployment = deploy();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let registry: Arc<dyn Registry> = Arc::new(
            micro_remote::RemoteRegistry::new(&deployment.gateway.registry.to_string())
                .expect("remote registry"),
        );
        let client = Client::new(&test_options("versions-client"), registry);

        let mut pinned = GreeterClient::new(client.channel_with("greeter", Filter::version("v2")));
        let mut replies: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..CALLS {
            let reply = pinned
                .say_hello(HelloRequest { name: "x".into() })
                .await
                .expect("call pinned to v2");
            *replies
                .entry(greeting(&reply.into_inner().message))
                .or_default() += 1;
        }
        eprintln!("pinned to v2, {CALLS} calls: {replies:?}");
        assert_eq!(
            replies.keys().map(String::as_str).collect::<Vec<_>>(),
            ["TwoA", "TwoB"],
            "only the v2 nodes, both of them, answer: {replies:?}"
        );

        // A version no node has: refused, naming what exists; never another version.
        let mut missing = GreeterClient::new(client.channel_with("greeter", Filter::version("v9")));
        let status = missing
            .say_hello(HelloRequest { name: "x".into() })
            .await
            .expect_err("no node of v9");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("`greeter` has version v9")
                && status.message().contains("versions registered: v1, v2"),
            "{}",
            status.message()
        );
    });
}

#[test]
fn the_gateway_routes_by_the_micro_version_header() {
    let deployment = deploy();
    let gateway = deployment.gateway.http;

    // Without the header, every version answers (round-robin over the three nodes).
    let mut all = BTreeMap::new();
    wait_until(Duration::from_secs(20), "all three greeters answer", || {
        all = gateway_replies(gateway, None);
        all.len() == 3
    });
    eprintln!("no header, {CALLS} calls: {all:?}");

    // `Micro-Version: v2` reaches only the v2 nodes.
    let v2 = gateway_replies(gateway, Some("v2"));
    eprintln!("Micro-Version: v2, {CALLS} calls: {v2:?}");
    assert_eq!(
        v2.keys().map(String::as_str).collect::<Vec<_>>(),
        ["TwoA", "TwoB"],
        "{v2:?}"
    );
    // And `v1` the v1 node alone.
    assert_eq!(
        gateway_replies(gateway, Some("v1")),
        counts(&[("One", CALLS)])
    );

    // A version no node has: 503 naming the versions that exist.
    let response = say_hello(gateway, Some("v9"));
    assert_eq!(response.status, 503, "{}", response.body);
    let message = response.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("`greeter` has version v9")
            && message.contains("versions registered: v1, v2"),
        "{message}"
    );

    // A header that is not a version: 400 naming the header.
    let response = say_hello(gateway, Some("v2/../admin"));
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(response.body.contains("Micro-Version"), "{}", response.body);
}
