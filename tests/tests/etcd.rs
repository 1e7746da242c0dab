//! End to end on a real etcd (a private one per test, so it can be killed and restarted):
//! gateway and greeters with `--registry etcd`, a SIGKILLed node, etcd restarting under running
//! services, hot config reload, and a clear error when etcd is unreachable at start.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use micro_testkit::{
    EXPIRY, GatewayProcess, PROPAGATION, PrivateEtcd, Process, SHORT_TTL_ARGS, SLACK, binary, get,
    post, wait_until,
};

fn gateway_on(etcd: &PrivateEtcd) -> (GatewayProcess, std::net::SocketAddr) {
    let gateway =
        GatewayProcess::start(&["--registry", "etcd", "--registry-address", &etcd.address]);
    let http = gateway.http;
    (gateway, http)
}

fn node_count(http: std::net::SocketAddr, service: &str) -> usize {
    let response = get(http, &format!("/{service}"));
    if response.status != 200 {
        return 0;
    }
    response.json()["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["nodes"].as_array().map_or(0, Vec::len))
        .sum()
}

fn hello(http: std::net::SocketAddr, service: &str, name: &str) -> Option<String> {
    let response = post(
        http,
        &format!("/{service}/Greeter/SayHello"),
        &format!("{{\"name\":\"{name}\"}}"),
    );
    (response.status == 200).then(|| {
        response.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

#[test]
fn greeters_on_etcd_survive_a_killed_node_and_an_etcd_restart() {
    let mut etcd = PrivateEtcd::start();
    let (_gateway, http) = gateway_on(&etcd);
    let greeter = |greeting: &str| {
        let mut args = vec![
            "--registry",
            "etcd",
            "--registry-address",
            etcd.address.as_str(),
        ];
        args.extend_from_slice(&SHORT_TTL_ARGS);
        args.extend_from_slice(&["--greeting", greeting]);
        let mut process = Process::start("greeter", &args, &[], None);
        let address = process.listening_address();
        (process, address)
    };
    let (_a, _) = greeter("A");
    let (b, b_address) = greeter("B");
    wait_until(PROPAGATION, "both nodes registered in etcd", || {
        node_count(http, "greeter") == 2
    });
    let replies: HashSet<String> = (0..10)
        .filter_map(|_| hello(http, "greeter", "x"))
        .collect();
    assert_eq!(
        replies,
        HashSet::from(["A x".to_string(), "B x".to_string()])
    );

    b.kill();
    let killed = Instant::now();
    wait_until(SLACK, "the killed node's port is closed", || {
        std::net::TcpStream::connect(&b_address).is_err()
    });
    // "Later" calls: a call racing the crash may reach the dying node and is then not retried
    // (it may have run); once the gateway has seen the connection close, every call succeeds.
    wait_until(SLACK, "a call after the kill succeeds", || {
        hello(http, "greeter", "y").is_some()
    });
    for _ in 0..5 {
        assert_eq!(
            hello(http, "greeter", "y").as_deref(),
            Some("A y"),
            "calls after the kill succeed"
        );
    }
    wait_until(
        EXPIRY.saturating_sub(killed.elapsed()),
        "the dead node's lease lapses within its TTL (and slack)",
        || node_count(http, "greeter") == 1,
    );

    etcd.kill();
    etcd.resume();
    let recovered = wait_until(
        Duration::from_secs(20),
        "calls succeed again after etcd restarted",
        || {
            hello(http, "greeter", "z").as_deref() == Some("A z")
                && node_count(http, "greeter") == 1
        },
    );
    eprintln!("recovered {recovered:?} after etcd came back");
}

#[test]
fn greeting_changes_in_etcd_reach_the_next_reply_without_restart() {
    let etcd = PrivateEtcd::start();
    let (_gateway, http) = gateway_on(&etcd);
    let mut service = Process::start(
        "config-watch",
        &[
            "--registry",
            "etcd",
            "--registry-address",
            &etcd.address,
            "--config",
            "etcd",
            "--config-address",
            &etcd.address,
            "--server-name",
            "hot",
        ],
        &[],
        None,
    );
    service.line_containing("listening on", Duration::from_secs(30));
    wait_until(PROPAGATION, "registered", || {
        hello(http, "hot", "x").is_some()
    });
    assert_eq!(
        hello(http, "hot", "x").as_deref(),
        Some("Hello x"),
        "the default greeting"
    );

    etcd.etcdctl(&["put", "/micro/config/hot/greeting", "\"Howdy\""]);
    let took = wait_until(
        SLACK,
        "the new greeting is used at once (an etcd watch, not a restart or a slow poll)",
        || hello(http, "hot", "x").as_deref() == Some("Howdy x"),
    );
    eprintln!("hot reload took {took:?}");

    // A malformed value is reported naming the key; the previous greeting stays.
    etcd.etcdctl(&["put", "/micro/config/hot/greeting", "{not json"]);
    wait_until(
        SLACK,
        "the malformed value is reported with its key",
        || service.stderr().contains("hot/greeting"),
    );
    assert_eq!(
        hello(http, "hot", "x").as_deref(),
        Some("Howdy x"),
        "the last good greeting is kept"
    );
    etcd.etcdctl(&["put", "/micro/config/hot/greeting", "\"Hi\""]);
    wait_until(SLACK, "a good value after a bad one is used", || {
        hello(http, "hot", "x").as_deref() == Some("Hi x")
    });
}

#[test]
fn unreachable_etcd_at_start_is_named_and_the_server_keeps_trying() {
    let etcd_address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        listener.local_addr().expect("address").to_string()
    };
    let mut greeter = Process::start(
        "greeter",
        &[
            "--registry",
            "etcd",
            "--registry-address",
            &etcd_address,
            "--register-interval",
            "1s",
            "--register-ttl",
            "3s",
        ],
        &[],
        None,
    );
    greeter.line_containing("listening on", Duration::from_secs(30));
    wait_until(
        Duration::from_secs(15),
        "the failure is logged naming the address",
        || {
            greeter
                .stderr()
                .contains(&format!("cannot reach etcd at {etcd_address}"))
        },
    );
    wait_until(
        Duration::from_secs(15),
        "registration failures are logged again, once per interval",
        || greeter.stderr().matches("registration failed").count() >= 2,
    );
    let failures = greeter.stderr().matches("registration failed").count();
    assert!(
        failures <= 20,
        "logged at most once per interval, not per retry: {failures}"
    );
    assert!(
        greeter.child.try_wait().expect("status").is_none(),
        "the server keeps running"
    );

    // When etcd does come up on that address, the server registers by itself.
    let port = etcd_address.rsplit(':').next().expect("port").to_string();
    let etcd = PrivateEtcd::start_on(&port);
    let (_gateway, http) = gateway_on(&etcd);
    wait_until(
        Duration::from_secs(15),
        "registered once etcd answers",
        || hello(http, "greeter", "late").as_deref() == Some("Hello late"),
    );

    // A config that cannot be reached is an error at start, naming the address.
    let output = Command::new(binary("config-watch"))
        .args([
            "--registry",
            "memory",
            "--config",
            "etcd",
            "--config-address",
            "127.0.0.1:1",
        ])
        .output()
        .expect("run config-watch");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("127.0.0.1:1"));
}
